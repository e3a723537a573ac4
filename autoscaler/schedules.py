"""Scheduled minimums: `cron` in a timezone opens a window of `duration_s` during which `min` instances stay.

Pure: no I/O, no clock reads (`now` is epoch seconds, an argument). Overlapping windows take the largest `min`.

The cron fields are read as wall-clock time in the schedule's timezone (croniter walks the wall clock; zoneinfo
maps wall times to instants). Daylight-saving edges are decided so that a window is never lost:

- a wall time the clock skips (spring forward, e.g. 02:30 in Paris on the last Sunday of March) fires at the
  transition, the first instant after the gap (as Vixie cron runs jobs of the skipped hour);
- a wall time the clock repeats (fall back) fires at both occurrences: the window is simply extended;
- `duration_s` is elapsed time: an 8 h window is eight real hours even when the clock changes inside it.

`tests/unit/autoscaler/test_schedules.py` holds the table of DST cases on fixed instants.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import croniter

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from nest.contracts.model import ScalingSchedule

SHIFT_MARGIN = timedelta(hours=3)
"""More than any zone's daylight-saving shift: how far wall time and instants can disagree near a transition."""


def minimum_at(schedules: Iterable[ScalingSchedule], now: float) -> int:
    """The largest `min` among the schedules whose window contains `now` (epoch seconds); 0 if none does."""
    return max((schedule.min for schedule in schedules if is_open(schedule, now)), default=0)


def is_open(schedule: ScalingSchedule, now: float) -> bool:
    """Whether some firing of `schedule` lies in `(now - duration_s, now]`."""
    return open_until(schedule, now) is not None


def open_until(schedule: ScalingSchedule, now: float) -> float | None:
    """When the window open at `now` closes (its latest firing plus `duration_s`; a later firing may extend it);
    None if no window is open."""
    # Firings fall on whole minutes (and so do DST transitions), so the latest firing at or before `now` is the
    # latest at or before the minute's start: one search per minute and schedule, cached.
    minute = math.floor(now / 60.0) * 60
    latest = _latest_firing(schedule.cron, schedule.timezone, minute, schedule.duration_s)
    if latest is None or not latest <= now < latest + schedule.duration_s:
        return None
    return latest + schedule.duration_s


def next_opening(schedule: ScalingSchedule, now: float) -> float | None:
    """The first firing after `now` (epoch seconds), with the same daylight-saving rules; None if none comes."""
    zone = ZoneInfo(schedule.timezone)
    # Start a shift early: after a fall back, a wall time before now's may still fire after now (its second pass).
    walls = croniter(schedule.cron, datetime.fromtimestamp(now, zone).replace(tzinfo=None) - SHIFT_MARGIN)
    best: float | None = None
    for _ in range(100_000):
        wall: datetime = walls.get_next(datetime)
        if best is not None and wall.replace(tzinfo=UTC).timestamp() > best + SHIFT_MARGIN.total_seconds() * 2:
            return best
        for instant in _instants(wall, zone):
            if instant > now and (best is None or instant < best):
                best = instant
    return best


@functools.lru_cache(maxsize=4096)
def _latest_firing(cron: str, timezone: str, minute: int, duration_s: float) -> float | None:
    """The latest firing at or before `minute` (epoch seconds) that may still be open; None if there is none."""
    zone = ZoneInfo(timezone)
    best: float | None = None
    for wall in _walls_before(cron, zone, minute, duration_s):
        for instant in _instants(wall, zone):
            if instant <= minute and (best is None or instant > best):
                best = instant
    return best


def _walls_before(cron: str, zone: ZoneInfo, minute: int, duration_s: float) -> Iterator[datetime]:
    """Naive wall times at which `cron` fires, newest first, from a little after `minute` to before the window."""
    at = datetime.fromtimestamp(minute, UTC)
    upper = at.replace(tzinfo=None) + max(_offset(zone, at), _offset(zone, at - SHIFT_MARGIN)) + timedelta(seconds=1)
    since = at - timedelta(seconds=min(duration_s, 400 * 86400.0))
    lower = since.replace(tzinfo=None) + min(_offset(zone, since), _offset(zone, at)) - SHIFT_MARGIN
    walls = croniter(cron, upper)
    for _ in range(100_000):
        wall: datetime = walls.get_prev(datetime)
        yield wall
        if wall < lower:
            return


def _offset(zone: ZoneInfo, at: datetime) -> timedelta:
    return at.astimezone(zone).utcoffset() or timedelta(0)


def _instants(wall: datetime, zone: ZoneInfo) -> list[float]:
    """Epoch seconds at which the clock in `zone` shows `wall`: one, two (fall back) or the transition (gap)."""
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    second = wall.replace(tzinfo=zone, fold=1).timestamp()
    if first == second:
        return [first]
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == wall:
        return sorted({first, second})
    return [_transition(min(first, second), max(first, second), zone)]


def _transition(before: float, after: float, zone: ZoneInfo) -> float:
    """The first second in `(before, after]` with `after`'s UTC offset (bisection; gaps are rare)."""
    target = _offset(zone, datetime.fromtimestamp(after, UTC))
    low, high = math.floor(before), math.ceil(after)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, datetime.fromtimestamp(middle, UTC)) == target:
            high = middle
        else:
            low = middle
    return float(high)
