"""Loading the function's code, and describing clearly why it could not be loaded.

The detail names the file and line for syntax errors, the missing module for import errors, and the manifest
field for a missing or non-callable handler, because it is shown verbatim to the caller (502 `init_failed`) and
in `nest describe`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from typing import Any

from runtime.bytecode import install_tree, sidecar_for

TRACEBACK_MAX = 8 * 1024


class LoadError(Exception):
    """The code could not be loaded; reported on the status pipe and to callers."""

    def __init__(self, error_type: str, detail: str, traceback: str) -> None:
        super().__init__(f"{error_type}: {detail}")
        self.error_type = error_type
        self.detail = detail
        self.traceback = traceback

    def as_status(self) -> dict[str, str]:
        return {
            "event": "init_failed",
            "error_type": self.error_type,
            "detail": self.detail,
            "traceback": self.traceback,
        }


def _where(exc: BaseException, code_dir: str) -> str:
    """`(main.py, line 3)`: the innermost frame inside the function's own code."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename.removeprefix(code_dir).lstrip('/')}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(code_dir)]
    if frames:
        return f" ({frames[-1].filename.removeprefix(code_dir).lstrip('/')}, line {frames[-1].lineno})"
    return ""


def load_handler(code_dir: str, handler: str, *, style: str, bytecode: bool = False) -> Any:
    """Import `module:attribute` from `code_dir`; raise `LoadError` with a clear detail on any failure.

    `bytecode`: `code_dir` is a package in the node cache; its modules' bytecode is cached in its sidecar
    (`runtime/bytecode.py`). Not for a plain directory, whose sidecar would land beside the user's sources."""
    module_name, _, attribute = handler.partition(":")
    if bytecode:
        install_tree(code_dir, sidecar_for(code_dir))
    sys.path.insert(0, code_dir)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = (exc.msg if isinstance(exc, SyntaxError) else str(exc)) + _where(exc, code_dir)
        raise LoadError(type(exc).__name__, detail, traceback.format_exc()[-TRACEBACK_MAX:]) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(
                "AttributeError",
                f"module {module_name!r} has no attribute {part!r} (handler {handler!r}; check nest.yaml handler)",
                "",
            )
        target = getattr(target, part)
    if not callable(target):
        raise LoadError(
            "TypeError",
            f"{handler!r} is a {type(target).__name__}, not a callable (check nest.yaml handler)",
            "",
        )
    if style == "lambda" and len(_positional(target)) < 2 and not _has_varargs(target):
        raise LoadError("TypeError", f"{handler!r} must take (event, context) for handler_style lambda", "")
    return target


def _positional(target: Any) -> list[inspect.Parameter]:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return [inspect.Parameter("a", inspect.Parameter.POSITIONAL_ONLY)] * 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in parameters if p.kind in kinds]


def _has_varargs(target: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return True


def is_async(target: Any) -> bool:
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)
