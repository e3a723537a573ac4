"""The simulator's model, policies and report are pure like the decision they replay: no I/O, no clock, no luck.

The shared guard (tests/unit/test_purity.py) allows only sibling imports; the simulator also needs `heapq`,
`collections` and `re`, and imports `autoscaler.decision`, so it gets its own list here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PURE = ["autoscaler/simulation/model.py", "autoscaler/simulation/policies.py", "autoscaler/simulation/report.py"]
ALLOWED = {"__future__", "math", "dataclasses", "typing", "collections", "collections.abc", "heapq", "re"}
FORBIDDEN = {"time", "asyncio", "random", "os", "socket", "subprocess", "datetime", "pathlib", "open"}


def problems(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [item.name for item in node.names]
            for name in names:
                if name not in ALLOWED and not name.startswith(("autoscaler.", "nest.contracts")):
                    found.append(f"{path.name}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call):
            called = node.func.value if isinstance(node.func, ast.Attribute) else node.func
            if isinstance(called, ast.Name) and called.id in FORBIDDEN:
                found.append(f"{path.name}:{node.lineno} calls {called.id}")
    return found


@pytest.mark.parametrize("module", PURE)
def test_the_simulator_core_does_no_io_and_reads_no_clock(module: str) -> None:
    assert problems(ROOT / module) == []


def test_the_guard_catches_a_file_read(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def load():\n    return open('x').read()\n")
    assert problems(sneaky) == ["sneaky.py:2 calls open"]
