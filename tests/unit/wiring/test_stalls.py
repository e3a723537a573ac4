from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from nest.wiring.stalls import VARIABLE, StallWatch, watching

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _hold_the_loop() -> None:
    time.sleep(0.2)  # what a blocking call on the loop does to every request


async def _watched(path: Path) -> None:
    watch = StallWatch(str(path), threshold_s=0.05)
    watch.start()
    try:
        await asyncio.sleep(0.01)
        _hold_the_loop()
        await asyncio.sleep(0.01)
    finally:
        watch.stop()


def test_a_stall_is_written_with_the_stack_that_held_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "stalls.txt"
    asyncio.run(_watched(path))
    text = path.read_text()
    assert text.startswith("--- loop stall ")
    assert "_hold_the_loop" in text
    assert text.count("--- loop stall") == 1  # once per stall, not once per check


def test_nothing_runs_unless_the_variable_names_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    with watching() as watch:
        assert watch is None
    monkeypatch.setenv(VARIABLE, str(tmp_path / "stalls.txt"))

    async def served() -> None:
        with watching() as watch:
            assert watch is not None
            _hold_the_loop()

    asyncio.run(served())
    assert "_hold_the_loop" in (tmp_path / "stalls.txt").read_text()
