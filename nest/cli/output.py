"""The CLI's consoles: one for results (stdout), one for errors and progress (stderr).

On a terminal Rich fits tables to its width. Piped or redirected output (`nest tasks ls | grep dead`, a test)
would otherwise be cut at Rich's default of 80 columns, wrapping every long cell over several lines; there
tables get `PIPED_WIDTH` columns unless `COLUMNS` says otherwise.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from rich.console import Console

PIPED_WIDTH = 200


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=PIPED_WIDTH if piped else None)


out = _console(stderr=False)
err = _console(stderr=True)


def when(epoch: float | None) -> str:
    """An instant as the CLI shows it: UTC, to the second (`2026-12-03T09:00:00`); `-` for none."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")
