"""Piped CLI output is not cut at 80 columns."""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING

from rich.table import Table

from nest.cli.output import PIPED_WIDTH, _console

if TYPE_CHECKING:
    import pytest


def test_a_piped_table_keeps_its_long_cells_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    console = _console(stderr=False)
    assert console.width == PIPED_WIDTH
    table = Table("CALL ID", "ERROR", box=None)
    table.add_row("10d27a6697b740dd", "retries exhausted: 3 attempts (max_retries 2); last: ValueError: went wrong")
    console.print(table)
    assert "last: ValueError: went wrong" in captured.getvalue()


def test_columns_still_decides_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert _console(stderr=True).width == 100
