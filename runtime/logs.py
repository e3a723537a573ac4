"""Per-invocation log capture: every line the function prints becomes one JSON object with its invocation id.

`sys.stdout` and `sys.stderr` are replaced by writers that look up the current invocation in a `ContextVar`
(asyncio tasks and the thread pool both carry it), buffer partial lines per invocation, and write whole lines to
the original file descriptors, which the controller points at the function's log file. A line is written with one
`os.write`, so lines from concurrent instances do not interleave.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from contextvars import ContextVar

LINE_MAX = 16 * 1024
_ENCODER = json.JSONEncoder(ensure_ascii=False)
"""One encoder for every line: `json.dumps` with an option builds one per call (and in a forked instance its
first lines ran that code for the first time, copying the zygote's pages it lies on)."""

current_invocation: ContextVar[str | None] = ContextVar("nest_invocation", default=None)


class LogSink:
    """Formats and writes log lines for one instance."""

    def __init__(self, *, function: str, version: str, instance: str) -> None:
        self._base = {"function": function, "version": version, "instance": instance}
        self._lock = threading.Lock()
        self._partial: dict[tuple[str, str | None], str] = {}

    def emit(self, stream: str, message: str, invocation_id: str | None, fd: int = 2) -> None:
        if len(message) > LINE_MAX:
            message = message[:LINE_MAX] + "...[truncated]"
        record = {"ts": time.time(), "stream": stream, **self._base, "invocation_id": invocation_id, "message": message}
        line = _ENCODER.encode(record).encode("utf-8", "replace") + b"\n"
        with contextlib.suppress(OSError):  # a lost log file must not fail the function
            os.write(fd, line)

    def system(self, message: str, invocation_id: str | None = None) -> None:
        for line in message.rstrip("\n").split("\n"):
            self.emit("system", line, invocation_id)

    def write(self, stream: str, fd: int, text: str) -> None:
        invocation_id = current_invocation.get()
        key = (stream, invocation_id)
        with self._lock:
            pending = self._partial.pop(key, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                if len(rest) > LINE_MAX:
                    lines.append(rest)
                else:
                    self._partial[key] = rest
        for line in lines:
            self.emit(stream, line, invocation_id, fd)

    def flush_invocation(self, invocation_id: str | None) -> None:
        """Write what an invocation left without a final newline."""
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            with self._lock:
                rest = self._partial.pop((stream, invocation_id), "")
            if rest:
                self.emit(stream, rest, invocation_id, fd)


class CapturedStream(io.TextIOBase):
    """A text stream that hands every write to the sink, tagged with the current invocation."""

    def __init__(self, sink: LogSink, *, stream: str, fd: int) -> None:
        self._sink, self._stream, self._fd = sink, stream, fd

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._sink.write(self._stream, self._fd, text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd
