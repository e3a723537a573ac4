"""Fail on the hard size caps of STYLE.md §5: modules over 600 lines, functions over 100 lines, Protocols
with more than 7 methods, packages with more than 12 modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("nest", "gateway", "autoscaler", "controller", "runtime", "sandbox")
MODULE_MAX, FUNCTION_MAX, PROTOCOL_MAX, PACKAGE_MAX = 600, 100, 7, 12


def _package_problems(root: Path, package: str) -> list[str]:
    found = []
    for directory in [root / package, *(p for p in (root / package).rglob("*") if p.is_dir())]:
        if "_generated" in directory.parts or "__pycache__" in directory.parts:
            continue
        modules = [p for p in directory.glob("*.py") if p.name != "__init__.py"]
        if len(modules) > PACKAGE_MAX:
            found.append(f"{directory}: {len(modules)} modules (cap {PACKAGE_MAX}); split it")
    return found


def _is_typing_protocol(base: ast.expr) -> bool:
    """`Protocol` or `typing.Protocol`, not `asyncio.Protocol` (a transport callback class)."""
    if isinstance(base, ast.Name):
        return base.id == "Protocol"
    return isinstance(base, ast.Attribute) and base.attr == "Protocol" and getattr(base.value, "id", "") == "typing"


def _module_problems(path: Path) -> list[str]:
    text = path.read_text()
    found = []
    if text.count("\n") > MODULE_MAX:
        found.append(f"{path}: {text.count(chr(10))} lines (cap {MODULE_MAX})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno
            if length > FUNCTION_MAX:
                found.append(f"{path}:{node.lineno} {node.name}: {length} lines (cap {FUNCTION_MAX})")
        if isinstance(node, ast.ClassDef) and any(_is_typing_protocol(base) for base in node.bases):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            if len(methods) > PROTOCOL_MAX:
                found.append(f"{path}: Protocol {node.name} has {len(methods)} methods (cap {PROTOCOL_MAX})")
    return found


def problems(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        found += _package_problems(root, package)
        for path in (root / package).rglob("*.py"):
            if "_generated" not in path.parts:
                found += _module_problems(path)
    return found


if __name__ == "__main__":
    issues = problems(Path(__file__).resolve().parent.parent)
    for issue in issues:
        print(issue)
    sys.exit(1 if issues else 0)
