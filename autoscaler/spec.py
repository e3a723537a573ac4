"""What a `ScalingSpec` asks of each metric: its windows, and the instances each metric's demand implies.

Pure: no I/O, no clock reads. Every metric with a target (concurrency always; QPS, CPU and memory when their
target is set and the source reports them) keeps a `Window`; the demand it implies is

    wanted = ceil(observed / (target * utilization))

over the stable and the panic window. Two *instant* demands need no window: `queue`, the in-flight plus queued
requests at the end of the tick against 100% of the target (a request waits only once every slot is taken; a
burst late in a tick scales at once), and `trend`, the panic window's least-squares
line projected over `start_latency_s` plus one tick when it rises significantly (`prediction`; a slope within
two standard errors of flat is noise), so a steady ramp has its instances ready when the load arrives rather
than a start-up later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from autoscaler.windows import Window, average, projected, record

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nest.contracts.model import ScalingSpec


class Metric(StrEnum):
    """What drove a decision: a demand metric, or NONE when only bounds and idleness did."""

    CONCURRENCY = "concurrency"
    QPS = "qps"
    CPU = "cpu"
    MEMORY = "memory"
    QUEUE = "queue"
    TREND = "trend"
    NONE = "none"


WINDOWED = (Metric.CONCURRENCY, Metric.QPS, Metric.CPU, Metric.MEMORY)
MiB = 1024.0**2
TREND_MIN_T = 2.0
"""A rise counts as a trend only when its slope is this many standard errors above flat (noise is no trend)."""

Windows = tuple[tuple[Metric, Window], ...]


@dataclass(frozen=True, slots=True)
class Want:
    """Instances one metric asks for, and the arithmetic behind it (for the reason)."""

    count: int
    metric: Metric
    detail: str


def target_of(spec: ScalingSpec, metric: Metric) -> float | None:
    """What one instance should carry of `metric` at 100% utilisation; None if the spec ignores it."""
    if metric is Metric.QPS:
        return spec.target_qps
    if metric is Metric.CPU:
        return spec.target_cpu
    if metric is Metric.MEMORY:
        return spec.target_memory
    return spec.target_concurrency  # concurrency, and the queue and trend measured in requests


def recorded(
    spec: ScalingSpec, windows: Windows, values: Mapping[Metric, float | None], *, now: float, interval_s: float
) -> Windows:
    """`windows` with this interval's values recorded, one window per metric the spec targets."""
    keep_s = max(spec.stable_window_s, spec.panic_window_s) + 2.0
    known = dict(windows)
    result = []
    for metric in WINDOWED:
        if target_of(spec, metric) is None:
            continue
        window = known.get(metric, Window())
        value = values.get(metric)
        if value is not None and interval_s > 0:
            window = record(window, max(value, 0.0), now=now, interval_s=interval_s, keep_s=keep_s)
        result.append((metric, window))
    return tuple(result)


def wanted(spec: ScalingSpec, metric: Metric, value: float) -> int:
    target = target_of(spec, metric) or 1.0
    return math.ceil(value / (target * spec.utilization) - 1e-9) if value > 0 else 0


def show(metric: Metric, value: float) -> str:
    if metric is Metric.MEMORY:
        return f"{value / MiB:.0f}Mi"
    if metric is Metric.CPU:
        return f"{value:.2f} cores"
    if metric is Metric.QPS:
        return f"{_number(value)}/s"
    return _number(value)


def _number(value: float) -> str:
    """One decimal, but enough digits that a small non-zero value does not read as 0.0 (it still wants 1)."""
    return f"{value:.1f}" if value >= 0.05 or value == 0 else f"{value:.2g}"


def _formula(spec: ScalingSpec, metric: Metric) -> str:
    target = target_of(spec, metric) or 1.0
    shown = show(metric, target) if metric in (Metric.MEMORY, Metric.CPU, Metric.QPS) else f"{target:g}"
    return f"({shown} × {spec.utilization:g})"


def _rising(spec: ScalingSpec, window: Window, level: float, *, now: float, ahead_s: float) -> float | None:
    """The panic window's trend `ahead_s` from now, if prediction is on and the trend rises above `level`."""
    if not spec.prediction:
        return None
    ahead = projected(window, now=now, length_s=spec.panic_window_s, ahead_s=ahead_s, min_t=TREND_MIN_T)
    return ahead if ahead is not None and ahead > level else None


@dataclass(frozen=True, slots=True)
class Demand:
    """Per-metric observed values over both windows at one instant, plus the queue and the trend."""

    stable_values: tuple[tuple[Metric, float], ...]
    panic_values: tuple[tuple[Metric, float], ...]
    queue: tuple[int, int]
    """(in flight, queued) at the end of the tick."""
    trend: tuple[Metric, float, float] | None
    """(metric, projected value, seconds ahead) of the steepest rise, if any metric rises."""

    @classmethod
    def of(
        cls, spec: ScalingSpec, windows: Windows, *, in_flight: int, queued: int, now: float, tick_s: float
    ) -> Demand:
        stable, panic = [], []
        trend: tuple[Metric, float, float] | None = None
        ahead_s = spec.start_latency_s + tick_s
        for metric, window in windows:
            stable_value = average(window, now=now, length_s=spec.stable_window_s)
            panic_value = average(window, now=now, length_s=spec.panic_window_s)
            if stable_value is not None:
                stable.append((metric, stable_value))
            if panic_value is None:
                continue
            panic.append((metric, panic_value))
            ahead = _rising(spec, window, panic_value, now=now, ahead_s=ahead_s)
            if ahead is not None and (trend is None or wanted(spec, metric, ahead) > wanted(spec, trend[0], trend[1])):
                trend = (metric, ahead, ahead_s)
        return cls(tuple(stable), tuple(panic), (in_flight, queued), trend)

    def stable(self, spec: ScalingSpec) -> Want:
        """The largest demand over the stable window, the queue and the trend."""
        return self._largest(spec, self.stable_values, spec.stable_window_s)

    def windowed(self, spec: ScalingSpec) -> Want:
        """The largest demand over the stable window alone: what a scale-down may hold on to."""
        return self._largest(spec, self.stable_values, spec.stable_window_s, instant=False)

    def panic_windowed(self, spec: ScalingSpec) -> Want:
        """The largest demand over the panic window alone: what a panic ratchets into its held count."""
        return self._largest(spec, self.panic_values, spec.panic_window_s, instant=False)

    def panicking(self, spec: ScalingSpec) -> Want:
        """The largest demand over the panic window, the queue and the trend."""
        return self._largest(spec, self.panic_values, spec.panic_window_s)

    def panic_trigger(self, spec: ScalingSpec, capacity: int) -> str:
        """Why to panic ("" if not): some panic-window demand, in instances, reached `panic_threshold` x `capacity`.

        Counted in instances as Knative's KPA does (`desiredPanicPodCount / readyPodsCount >= threshold`).
        """
        for metric, value in self.panic_values:
            count = wanted(spec, metric, value)
            if value > 0 and count >= spec.panic_threshold * capacity:
                return (
                    f"panic: {spec.panic_window_s:g} s {metric} {show(metric, value)} / {_formula(spec, metric)}"
                    f" → {count} ≥ {spec.panic_threshold:g} × {capacity} instance(s)"
                )
        return ""

    def _largest(
        self, spec: ScalingSpec, values: tuple[tuple[Metric, float], ...], window_s: float, *, instant: bool = True
    ) -> Want:
        candidates = [
            Want(
                wanted(spec, metric, value),
                metric,
                f"{window_s:g} s {metric} {show(metric, value)} / {_formula(spec, metric)} → "
                f"{wanted(spec, metric, value)}",
            )
            for metric, value in values
        ]
        if not instant:
            return max(candidates, key=lambda want: want.count, default=Want(0, Metric.NONE, "no data"))
        in_flight, queued = self.queue
        count = math.ceil((in_flight + queued) / spec.target_concurrency - 1e-9) if in_flight + queued else 0
        formula = f"{spec.target_concurrency:g}"
        candidates.append(Want(count, Metric.QUEUE, f"{in_flight} in flight + {queued} queued / {formula} → {count}"))
        if self.trend is not None:
            metric, value, ahead_s = self.trend
            count = wanted(spec, metric, value)
            candidates.append(
                Want(
                    count,
                    Metric.TREND,
                    f"trend: {metric} rising to {show(metric, value)} in {ahead_s:.2f} s / "
                    f"{_formula(spec, metric)} → {count}",
                )
            )
        return max(candidates, key=lambda want: want.count)
