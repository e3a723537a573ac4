"""Crash points: where the crash tests make `nest up` kill itself (SIGKILL), to prove nothing accepted is lost.

Armed once, at import, by the environment; never in normal use:

- `NEST_CRASH_AT=POINT`: the point (one of `POINTS`);
- `NEST_CRASH_SKIP=N`: pass it N times before crashing (default 0: the first time);
- `NEST_CRASH_DELAY_S=S`: crash S seconds after reaching it instead of at once (e.g. while the function runs).

Unarmed, `crashpoint(...)` costs one global lookup and a comparison.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = frozenset(
    {
        "before_persist",  # inside the submission's transaction, before its COMMIT
        "after_persist",  # committed, before the 202 is sent
        "after_dispatch",  # leased, being handed to the function (with a delay: while it runs), before its answer
        "after_result",  # the function answered, before the attempt is settled (acked)
        "during_delivery",  # a destination delivery is in flight
    }
)

_armed: str | None = os.environ.get("NEST_CRASH_AT") or None
_skip = int(os.environ.get("NEST_CRASH_SKIP", "0") or 0)
_delay_s = float(os.environ.get("NEST_CRASH_DELAY_S", "0") or 0)
_lock = threading.Lock()

if _armed is not None and _armed not in POINTS:
    raise RuntimeError(f"NEST_CRASH_AT={_armed!r} is not one of {', '.join(sorted(POINTS))}")


def crashpoint(point: str) -> None:
    """Kill this process with SIGKILL if armed at `point` (after the configured skips and delay)."""
    if _armed is None:
        return
    if point != _armed:
        return
    global _skip
    with _lock:
        _skip -= 1
        if _skip >= 0:
            return
    if _delay_s > 0:
        threading.Timer(_delay_s, _kill).start()
    else:
        _kill()


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
