"""The scaling decision for one version: how many instances, and why.

Pure: no I/O, no clock reads, no asyncio. `autoscaler/loop.py` feeds it one `Observation` per tick (and on a
poke from the activator) with the state the previous decision returned, and applies the result.

    wanted  = ceil(observed / (target_concurrency * utilization))    e.g. 7 in flight / (10 * 0.7) -> 1
    desired = max(wanted seen within scale_down_delay)             up at once, down late (Knative's delay)
    zero    only after scale_to_zero_grace with nothing in flight, queued or completed, and only if min == 0

`observed` is the larger of the interval's time-weighted concurrency and the in-flight plus queued requests at
its end, so a burst that arrives late in a tick scales at once instead of a tick later.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import ScalingSpec


@dataclass(frozen=True, slots=True)
class Observation:
    concurrency: float
    """Time-weighted mean of in-flight plus queued requests over the interval."""
    in_flight: int
    queued: int
    completed: int
    current: int
    """Instances that exist now (ready or starting)."""
    poked: bool = False
    """The activator holds a request for this version and asked for capacity now."""
    _: KW_ONLY
    ready: int | None = None
    """Instances ready to serve; None counts every current instance."""
    qps: float | None = None
    """Requests per second over the interval; None derives it from `completed / interval_s`."""
    cpu: float | None = None
    """Cores in use by all instances (mean over the interval), where the backend reports it."""
    memory: float | None = None
    """Bytes in use by all instances, where the backend reports it."""
    interval_s: float = 1.0
    """Seconds the interval's values cover, ending at `now`; 0 for a point observation (a poke)."""


class Mode(StrEnum):
    STABLE = "stable"
    PANIC = "panic"


class Metric(StrEnum):
    """What drove a decision: a demand metric, or NONE when only bounds and idleness did."""

    CONCURRENCY = "concurrency"
    QPS = "qps"
    CPU = "cpu"
    MEMORY = "memory"
    QUEUE = "queue"
    TREND = "trend"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ScalerState:
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, wanted) within the scale-down delay window, oldest first."""
    last_active: float | None = None
    """Last time anything was in flight, queued or completed; None before the first observation."""
    started: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    mode: Mode
    metric: Metric
    reason: str
    state: ScalerState


def decide(spec: ScalingSpec, state: ScalerState, seen: Observation, now: float) -> Decision:
    """Desired instances for one version at `now` (monotonic seconds), with the reason."""
    if not state.started:
        # After a restart, the instances that exist count as a recommendation made now: nothing scales down
        # before a full delay window of fresh metrics (no flapping), and the idle grace starts now.
        state = ScalerState(((now, seen.current),), now if seen.current else None, started=True)
    active = bool(seen.in_flight or seen.queued or seen.completed or seen.poked)
    last_active = now if active else state.last_active
    per_instance = spec.target_concurrency * spec.utilization
    observed = max(seen.concurrency, float(seen.in_flight + seen.queued))
    wanted = math.ceil(observed / per_instance - 1e-9) if observed > 0 else 0
    waking = seen.current == 0 and (seen.queued > 0 or seen.poked)
    if waking:
        wanted = max(wanted, 1)
    horizon = now - spec.scale_down_delay_s
    kept = tuple(item for item in state.recommendations if item[0] > horizon)
    recommendations = (*kept, (now, wanted))
    held = max(count for _, count in recommendations)
    next_state = replace(state, recommendations=recommendations, last_active=last_active)
    desired, reason = _explain(spec, seen, now, wanted=wanted, held=held, observed=observed, last_active=last_active)
    if waking and desired >= 1:
        reason = f"activate: {max(seen.queued, 1)} request(s) waiting, 0 instances → {desired}"
    return Decision(desired, Mode.STABLE, Metric.CONCURRENCY, reason, next_state)


def _explain(
    spec: ScalingSpec,
    seen: Observation,
    now: float,
    *,
    wanted: int,
    held: int,
    observed: float,
    last_active: float | None,
) -> tuple[int, str]:
    formula = f"concurrency {observed:.1f} / ({spec.target_concurrency:g} × {spec.utilization:g})"
    if held == 0:
        idle_s = now - last_active if last_active is not None else math.inf
        if spec.min > 0:
            return spec.min, f"min: {spec.min} reserved (idle)"
        if seen.current > 0 and idle_s < spec.scale_to_zero_grace_s:
            return 1, f"grace: idle {idle_s:.0f}s < scale_to_zero_grace {spec.scale_to_zero_grace_s:g}s keeps 1"
        if seen.current > 0:
            return 0, f"zero: idle {idle_s:.0f}s ≥ scale_to_zero_grace {spec.scale_to_zero_grace_s:g}s"
        return 0, "idle: no traffic, no instances"
    desired = min(max(held, spec.min), spec.max)
    if desired == spec.max and held > spec.max:
        return desired, f"max: {formula} → {held}, capped at max {spec.max}"
    if desired == spec.min and held < spec.min:
        return desired, f"min: {spec.min} reserved ({formula} → {held})"
    if held > wanted:
        return desired, f"hold: scale_down_delay {spec.scale_down_delay_s:g}s keeps {held} (max seen; now {wanted})"
    if desired > seen.current:
        return desired, f"up: {formula} → {desired}"
    if desired < seen.current:
        return desired, f"down: {formula} → {desired}"
    return desired, f"steady: {formula} → {desired}"
