"""Reading a function's log file: the last lines, then new ones as instances write them.

Instances append JSON lines to `<log_dir>/<function>.log` (the local backend points their stdout and stderr
there; the runtime writes one JSON object per line). Following polls the file's size, which costs nothing when
idle and survives the rotation the backend does at 10 MiB (the file shrinks: start again from its top).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

FOLLOW_POLL_S = 0.2
TAIL_BLOCK = 64 * 1024


def _tail_lines(path: Path, count: int) -> tuple[list[bytes], int]:
    """The last `count` complete lines and the offset after them."""
    try:
        with path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            position, data = end, b""
            while position > 0 and data.count(b"\n") <= count:
                step = min(TAIL_BLOCK, position)
                position -= step
                file.seek(position)
                data = file.read(step) + data
    except FileNotFoundError:
        return [], 0
    complete, _, _ = data.rpartition(b"\n")
    lines = [line + b"\n" for line in complete.split(b"\n") if line] if complete else []
    offset = position + len(complete) + (1 if complete else 0)
    return (lines[-count:] if count else []), offset


def _read_from(path: Path, offset: int) -> tuple[list[bytes], int]:
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0  # rotated
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], 0
    complete, newline, _ = data.rpartition(b"\n")
    if not newline:
        return [], offset
    return [line + b"\n" for line in complete.split(b"\n") if line], offset + len(complete) + 1


async def read_logs(path: Path, *, tail: int, follow: bool) -> AsyncIterator[bytes]:
    """NDJSON lines: the last `tail`, then (if `follow`) new ones until the client goes away."""
    lines, offset = await asyncio.to_thread(_tail_lines, path, tail)
    for line in lines:
        yield line
    while follow:
        await asyncio.sleep(FOLLOW_POLL_S)
        lines, offset = await asyncio.to_thread(_read_from, path, offset)
        for line in lines:
            yield line
