"""`NEST_DEBUG_LOOP_STALLS=PATH`: a debugging aid that finds what holds up the platform's event loop.

Every request, instance start and scaling decision of `nest up` runs on one event loop, so anything that keeps it
busy for milliseconds delays them all, and shows up only as a noisy tail in the benchmarks. With the variable set,
a callback re-arms itself on the loop every millisecond and a daemon thread watches it: when the loop has not run
it for more than `NEST_DEBUG_LOOP_STALL_MS` (default 8), the thread appends the main thread's stack to PATH, once
per stall:

    --- loop stall 13.1 ms
      File ".../controller/backends/local.py", line 282, in _launch
      ...

Found this way: the collector's full passes over the start-up heap (45-69 ms; `embedded.settle_heap`) and
uvloop's spawn of fresh instances (9-14 ms; `controller/backends/local.py`, `spawn_fresh`). It costs a wake-up a
millisecond and the GIL now and then: for debugging, not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

VARIABLE = "NEST_DEBUG_LOOP_STALLS"
THRESHOLD_VARIABLE = "NEST_DEBUG_LOOP_STALL_MS"
BEAT_S = 0.001
FRAMES = 14
"""Innermost frames written per stall."""


class StallWatch:
    """Writes the loop thread's stack to `path` whenever the loop stops for longer than `threshold_s`."""

    def __init__(self, path: str, *, threshold_s: float) -> None:
        self.path = path
        self.threshold_s = threshold_s
        self._beat = time.monotonic()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident()

    def start(self) -> None:
        """Start watching the running loop (call from it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._heartbeat()
        threading.Thread(target=self._watch, name="loop-stall-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        if not self._stopped.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(BEAT_S, self._heartbeat)

    def _watch(self) -> None:
        reported = 0.0
        while not self._stopped.wait(BEAT_S):
            beat = self._beat
            late = time.monotonic() - beat
            if late <= self.threshold_s or beat == reported:
                continue
            reported = beat
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)[-FRAMES:]) if frame is not None else "  (no frame)\n"
            with open(self.path, "a") as out:
                out.write(f"--- loop stall {late * 1000:.1f} ms\n{stack}")


def watch_from_environment() -> StallWatch | None:
    """A started `StallWatch` if `NEST_DEBUG_LOOP_STALLS` names a file; None (and nothing running) otherwise."""
    path = os.environ.get(VARIABLE)
    if not path:
        return None
    watch = StallWatch(path, threshold_s=float(os.environ.get(THRESHOLD_VARIABLE, "8")) / 1000)
    watch.start()
    return watch


@contextlib.contextmanager
def watching() -> Iterator[StallWatch | None]:
    """`watch_from_environment` for the duration of the block (the gateway's serving), stopped after."""
    watch = watch_from_environment()
    try:
        yield watch
    finally:
        if watch is not None:
            watch.stop()
