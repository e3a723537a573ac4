"""Sliding windows over 1 s buckets: averages and a trend line, from values that cover intervals of time.

Pure: no I/O, no clock reads. Each `record` says "the mean was `value` over the `interval_s` seconds ending at
`now`" and spreads it over the 1 s buckets it covers, weighted by how much of each second it covers (a 2.5 s
interval after a slow tick fills two whole buckets and half of a third). A window of length L at `now` is every
bucket that starts within `(now - L - 1, now]`, so it spans L seconds give or take the partial edges.

Three cases are explicit:

- **Observed zero.** A tick that saw no traffic records `0.0` over its interval: those seconds are known and count
  as zero (an idle second pulls the average down, as it should).
- **Gaps.** Seconds nobody recorded (the metrics source failed, the autoscaler was not running) are *unknown*, not
  zero: averages are taken over covered time only. Guessing zero would scale down on a broken metrics path; a
  gateway's counters accumulate across a failed collect anyway, so the next interval covers the gap with the
  true mean.
- **First samples.** A window younger than its length averages over what it has (Knative does the same); with
  nothing at all, `average` returns None and the caller says "no data".

A clock that steps backwards drops the buckets from its future.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

Bucket = tuple[int, float, float]
"""(second, sum of value x covered seconds, covered seconds)."""


@dataclass(frozen=True, slots=True)
class Window:
    """Buckets within the last `keep_s` seconds, oldest first, as three parallel tuples (sums run in C).

    Immutable: `record` returns a new one.
    """

    seconds: tuple[int, ...] = ()
    totals: tuple[float, ...] = ()
    """Per bucket: the sum of value x covered seconds."""
    covered: tuple[float, ...] = ()
    """Per bucket: the seconds of it that some observation covered."""

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return tuple(zip(self.seconds, self.totals, self.covered, strict=True))


def record(window: Window, value: float, *, now: float, interval_s: float, keep_s: float) -> Window:
    """`window` with `value` spread over `(now - interval_s, now]`; buckets older than `keep_s` dropped.

    A zero-length interval (a point observation, e.g. a poke) records nothing: it covers no time.
    """
    oldest = math.floor(now - keep_s) - 1
    low, high = bisect_left(window.seconds, oldest), bisect_right(window.seconds, now)
    seconds, totals, covered = (
        list(window.seconds[low:high]),
        list(window.totals[low:high]),
        list(window.covered[low:high]),
    )
    start = max(now - max(interval_s, 0.0), float(oldest))
    second = math.floor(start)
    while second < now:
        part = min(now, second + 1.0) - max(start, float(second))
        if part > 0:
            at = len(seconds) if not seconds or second > seconds[-1] else bisect_left(seconds, second)
            if at < len(seconds) and seconds[at] == second:
                totals[at] += value * part
                covered[at] += part
            else:
                seconds.insert(at, second)
                totals.insert(at, value * part)
                covered.insert(at, part)
        second += 1
    return Window(tuple(seconds), tuple(totals), tuple(covered))


def _first(window: Window, *, now: float, length_s: float) -> tuple[int, int]:
    """Index range of the buckets within `(now - length_s - 1, now]`."""
    return bisect_right(window.seconds, now - length_s - 1.0), bisect_right(window.seconds, now)


def average(window: Window, *, now: float, length_s: float) -> float | None:
    """Time-weighted mean over the covered seconds of the last `length_s`; None if none is covered."""
    low, high = _first(window, now=now, length_s=length_s)
    covered = sum(window.covered[low:high])
    if covered <= 0:
        return None
    return sum(window.totals[low:high]) / covered


def covered_s(window: Window, *, now: float, length_s: float) -> float:
    """How many seconds of the last `length_s` have a value."""
    low, high = _first(window, now=now, length_s=length_s)
    return sum(window.covered[low:high])


def projected(
    window: Window, *, now: float, length_s: float, ahead_s: float, min_points: int = 3, min_t: float = 0.0
) -> float | None:
    """The least-squares line through the last `length_s` of buckets, evaluated at `now + ahead_s`.

    Each bucket is a point at its middle, weighted by its covered time. None with fewer than `min_points`
    buckets (no trend from one or two seconds), or when the slope is within `min_t` standard errors of flat
    (a trend that noise explains is no trend).
    """
    low, high = _first(window, now=now, length_s=length_s)
    buckets = [
        (second, total, covered)
        for second, total, covered in zip(
            window.seconds[low:high], window.totals[low:high], window.covered[low:high], strict=True
        )
        if covered > 0
    ]
    if len(buckets) < min_points:
        return None
    weight = sum(covered for _, _, covered in buckets)
    mean_x = sum((second + 0.5) * covered for second, _, covered in buckets) / weight
    mean_y = sum(total for _, total, _ in buckets) / weight
    spread = sum(covered * (second + 0.5 - mean_x) ** 2 for second, _, covered in buckets)
    if spread <= 0:
        return mean_y
    slope = sum((second + 0.5 - mean_x) * (total - covered * mean_y) for second, total, covered in buckets) / spread
    if min_t > 0:
        residuals = sum(
            covered * (total / covered - mean_y - slope * (second + 0.5 - mean_x)) ** 2
            for second, total, covered in buckets
        )
        noise = math.sqrt(residuals / weight * len(buckets) / max(len(buckets) - 2, 1) / spread)
        if abs(slope) <= min_t * noise:
            return None
    return mean_y + slope * (now + ahead_s - mean_x)
