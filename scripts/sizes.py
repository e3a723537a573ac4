"""Fail on the hard size caps of STYLE.md §5: modules over 600 lines, functions over 100 lines, Protocols
with more than 7 methods, packages with more than 12 modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("nest", "gateway", "autoscaler", "controller", "runtime", "sandbox")
MODULE_MAX, FUNCTION_MAX, PROTOCOL_MAX, PACKAGE_MAX = 600, 100, 7, 12


def problems(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for directory in [root / package, *(p for p in (root / package).rglob("*") if p.is_dir())]:
            if "_generated" in directory.parts or "__pycache__" in directory.parts:
                continue
            modules = [p for p in directory.glob("*.py") if p.name != "__init__.py"]
            if len(modules) > PACKAGE_MAX:
                found.append(f"{directory}: {len(modules)} modules (cap {PACKAGE_MAX}); split it")
        for path in (root / package).rglob("*.py"):
            if "_generated" in path.parts:
                continue
            text = path.read_text()
            if text.count("\n") > MODULE_MAX:
                found.append(f"{path}: {text.count(chr(10))} lines (cap {MODULE_MAX})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno
                    if length > FUNCTION_MAX:
                        found.append(f"{path}:{node.lineno} {node.name}: {length} lines (cap {FUNCTION_MAX})")
                if isinstance(node, ast.ClassDef) and any(
                    getattr(base, "id", getattr(base, "attr", "")) == "Protocol" for base in node.bases
                ):
                    methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                    if len(methods) > PROTOCOL_MAX:
                        found.append(f"{path}: Protocol {node.name} has {len(methods)} methods (cap {PROTOCOL_MAX})")
    return found


if __name__ == "__main__":
    issues = problems(Path(__file__).resolve().parent.parent)
    for issue in issues:
        print(issue)
    sys.exit(1 if issues else 0)
