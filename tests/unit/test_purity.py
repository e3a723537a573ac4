"""The pure cores import nothing that does I/O and read no clock (STYLE.md §2, the second guard)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_MODULES = [
    "autoscaler/decision.py",
    "autoscaler/spec.py",
    "autoscaler/windows.py",
    "autoscaler/schedules.py",
    "gateway/balancing.py",
    "gateway/routes.py",
    "controller/reconciler.py",
    "controller/poolsizing.py",
    "controller/backends/rates.py",
    "gateway/asyncq/retry.py",
    "gateway/asyncq/aimd.py",
    "gateway/asyncq/fairness.py",
    "controller/codestore/nodecache.py",
]
ALLOWED_IMPORTS = {"__future__", "math", "dataclasses", "enum", "typing", "collections.abc"}
ALLOWED_IMPORTS |= {"bisect", "functools", "datetime", "zoneinfo", "croniter"}
"""`bisect` for `autoscaler/windows.py`; for `autoscaler/schedules.py`, calendar arithmetic on a given instant
(zoneinfo reads its tz data once, cached); `datetime.now` and friends stay forbidden below."""
FORBIDDEN_CALLS = {"time", "asyncio", "random", "os", "socket", "subprocess"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    package = path.parent.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                allowed = name in ALLOWED_IMPORTS or name.startswith(("nest.contracts", f"{package}."))
                if not allowed:
                    found.append(f"{path.name}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            if isinstance(base, ast.Name) and base.id in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {base.id}.{node.func.attr}")
            if isinstance(base, ast.Name) and base.id == "datetime" and node.func.attr in {"now", "utcnow", "today"}:
                found.append(f"{path.name}:{node.lineno} reads the clock")
    return found


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io_and_read_no_clock(module: str) -> None:
    assert _problems(ROOT / module) == []


def test_the_guard_catches_a_clock_read(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import time\n\ndef decide():\n    return time.monotonic()\n")
    assert _problems(sneaky) == ["sneaky.py:1 imports time", "sneaky.py:4 calls time.monotonic"]
