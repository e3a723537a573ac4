from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from runtime.loading import LoadError, load_handler

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def _forget_modules() -> object:
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
    sys.path[:] = path


@pytest.mark.parametrize(
    ("code", "handler", "error_type", "needle"),
    [
        pytest.param("def handle(:\n", "fnsyntax:handle", "SyntaxError", "line 1", id="syntax"),
        pytest.param(
            "import not_a_module_at_all\n", "fnimport:handle", "ModuleNotFoundError", "not_a_module", id="imp"
        ),
        pytest.param("x = 1\n", "fnmissing:handle", "AttributeError", "check nest.yaml handler", id="missing"),
        pytest.param("handle = 3\n", "fnvalue:handle", "TypeError", "not a callable", id="not-callable"),
        pytest.param("raise RuntimeError('boom at import')\n", "fnboom:handle", "RuntimeError", "line 1", id="raises"),
    ],
)
def test_load_failures_say_what_and_where(
    tmp_path: Path, code: str, handler: str, error_type: str, needle: str
) -> None:
    (tmp_path / f"{handler.split(':')[0]}.py").write_text(code)
    with pytest.raises(LoadError) as caught:
        load_handler(str(tmp_path), handler, style="native")
    assert caught.value.error_type == error_type
    assert needle in caught.value.detail


def test_a_lambda_handler_must_take_event_and_context(tmp_path: Path) -> None:
    (tmp_path / "fnlam.py").write_text("def handler(event):\n    return 1\n")
    with pytest.raises(LoadError, match="event, context"):
        load_handler(str(tmp_path), "fnlam:handler", style="lambda")


def test_a_good_handler_loads(tmp_path: Path) -> None:
    (tmp_path / "fngood.py").write_text("def handle(request):\n    return 1\n")
    assert load_handler(str(tmp_path), "fngood:handle", style="native")(None) == 1
