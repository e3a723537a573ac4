"""The scaling decision for one version: how many instances, and why.

Pure: no I/O, no clock reads, no asyncio. `autoscaler/loop.py` feeds it one `Observation` per tick (and on a
poke from the activator) with the state the previous decision returned, and applies the result. `now` is epoch
seconds (schedules need wall time); only differences of it matter otherwise.

Demand, per metric (`autoscaler/spec.py`), over a stable window (60 s) and a panic window (6 s) of 1 s buckets:

    wanted(metric) = ceil(observed / (target * utilization))      e.g. 14.5 in flight / (10 * 0.7) -> 3

for time-weighted concurrency, QPS, CPU and memory (those with a target), plus two *instant* terms that need no
window: the in-flight and queued requests at the end of the tick against 100% of the target (requests wait only
once every slot is taken, so a burst late in a tick scales at once) and, with `prediction`, the panic window's
trend line projected over `start_latency_s` plus one tick. The largest wins and names the metric.

What is held and what is not (measured with `tests/bench/bench_autoscaler.py`, see docs/autoscaling.md): only
the *windowed* demand is held through `scale_down_delay_s`; the instant terms act at once and are dropped at the
next tick when the queue is gone, so one noisy tick does not pay for a delay's worth of instances.

Modes, after Knative's KPA:

- **panic** when the panic window's demand, in instances, reaches `panic_threshold` x the capacity: the ready
  instances, but no more than the stable window asks for (instances the instant terms added are no evidence
  that the windows caught up), and only while there is traffic (a short burst followed by a fast scale-down
  leaves the 6 s window above the remaining capacity of a version that is already idle). While the condition
  holds, the windowed demand (panic and stable window) is ratcheted into `panic_held`; the count never drops
  below it nor below the instances found on entering.
  Panic ends when the condition has not held for a whole stable window (Knative's rule) *or* the stable window
  has caught up with the panic count *or* the version has been idle past its keep-alive.
- **stable** otherwise: scale up at once; scale down only to the highest windowed recommendation within
  `scale_down_delay_s`, by at most `max_scale_down_rate` per decision.

Then, in order: rate limits; the idle rule (no in-flight, queued or completed work for the keep-alive means
zero, and before that an idle version keeps one instance); `activation_scale` whenever not at zero; `min` raised
by the open schedules; `max`. The keep-alive is `scale_to_zero_grace_s`, lengthened to twice the longest of the
last three idle gaps when that is at most five graces (a function called every minute or two stays warm, a rare
one is not kept for nothing). The first decision for a version that has instances (an autoscaler restart, or a new
version that took over its predecessor's count, `controller/fleet.py`) counts them as a recommendation made now and
keeps them for a panic window of fresh metrics: no flapping. The first decision for a version with none (a
deploy) starts `initial_scale`, kept like any activity for the grace.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from autoscaler.schedules import minimum_at
from autoscaler.spec import Demand, Metric, Want, recorded

if TYPE_CHECKING:
    from autoscaler.windows import Window
    from nest.contracts.model import ScalingSpec


KEEP_GAPS = 3
"""Idle gaps remembered for the keep-alive."""
KEEP_FACTOR = 2.0
"""The keep-alive covers this multiple of the longest remembered gap ..."""
KEEP_MAX_GRACES = 5.0
"""... when that is at most this many graces; otherwise the grace alone (a rare function is not kept warm)."""
GAP_MIN_S = 1.5
"""Activity closer than this to the previous activity is the same busy spell, not a gap."""


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


@dataclass(frozen=True, slots=True)
class ScalerState:
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, wanted) within the scale-down delay window, oldest first; only those that may still be the maximum."""
    last_active: float | None = None
    """Last time anything was in flight, queued or completed; None before any."""
    started: bool = False
    windows: tuple[tuple[Metric, Window], ...] = ()
    """One window per windowed metric, keeping the longer of the stable and panic windows."""
    panic_last: float | None = None
    """When the panic condition last held, while in panic; None in stable mode."""
    panic_held: int = 0
    """The highest count decided during this panic."""
    restarted_at: float | None = None
    restarted_with: int = 0
    gaps: tuple[float, ...] = ()
    """The last `KEEP_GAPS` idle gaps (seconds between activity), for the keep-alive."""
    """Instances found by the first decision (an autoscaler restart): kept until metrics are fresh."""


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    mode: Mode
    metric: Metric
    reason: str
    state: ScalerState


def decide(spec: ScalingSpec, state: ScalerState, seen: Observation, now: float) -> Decision:
    """Desired instances for one version at `now` (epoch seconds), with the mode, the metric and the reason."""
    state, opening, opening_count = _begin(spec, state, seen, now)
    active = bool(seen.in_flight or seen.queued or seen.completed or seen.poked)
    windows = recorded(spec, state.windows, _values(seen), now=now, interval_s=seen.interval_s)
    state = replace(_active(state, active=active, now=now), windows=windows)
    keep_s = keep_alive_s(spec, state.gaps)
    tick_s = seen.interval_s if seen.interval_s > 0 else 1.0
    found = Demand.of(spec, windows, in_flight=seen.in_flight, queued=seen.queued, now=now, tick_s=tick_s)
    stable, windowed = found.stable(spec), found.windowed(spec)
    ready = seen.ready if seen.ready is not None else seen.current
    # A panic window still remembering a burst that has ended is no reason to start instances for an idle version.
    trigger = found.panic_trigger(spec, max(1, min(ready, windowed.count))) if active else ""
    idle_s = now - state.last_active if state.last_active is not None else math.inf
    idle = not active and idle_s >= keep_s
    calm = f"idle {idle_s:.0f} s ≥ keep-alive {keep_s:.0f} s" if idle else ""
    mode, state, note = _mode(spec, state, trigger=trigger, stable=windowed, calm=calm, now=now, current=seen.current)
    want = max(found.panicking(spec), stable, key=lambda item: item.count) if mode is Mode.PANIC else stable
    if seen.poked and want.count == 0:
        want = Want(1, Metric.QUEUE, "a request waits for an instance → 1")
    if mode is Mode.STABLE and idle:
        want = windowed = Want(0, Metric.NONE, f"idle {idle_s:.0f} s")
    if mode is Mode.PANIC:
        windowed = max(found.panic_windowed(spec), windowed, key=lambda item: item.count)
    desired, why, state = _delay(spec, state, windowed, now=now)
    if mode is Mode.PANIC:
        desired, why, state = _panic(state, desired, want, note=note, triggered=bool(trigger))
    if want.count > desired:
        desired, why = want.count, why if mode is Mode.PANIC else ""  # the instant terms act now, unheld
    desired, why = _rates(spec, desired, why or want.detail, current=seen.current)
    if opening_count and not seen.current:
        desired = max(desired, min(opening_count, spec.max))  # a deploy's initial_scale, kept for the grace
    desired, why = _idle(spec, desired, why, current=seen.current, idle_s=idle_s, keep_s=keep_s)
    desired, why = _restarted(spec, state, desired, why, now=now)
    desired, why = _bounds(spec, desired, why, now=now)
    if opening and desired == opening_count and want.count < opening_count:
        why = opening
    why = _worded(why, want, desired=desired, seen=seen, note=note if mode is Mode.STABLE else "")
    metric = want.metric if want.count > 0 else Metric.NONE
    return Decision(desired=desired, mode=mode, metric=metric, reason=why, state=state)


def answer_poke(spec: ScalingSpec, state: ScalerState, seen: Observation, now: float) -> Decision | None:
    """A decision between ticks for a version whose requests wait while none of its instances is ready, or None.

    `seen` is a point observation (`interval_s` 0, `poked`) of the requests waiting now. At zero instances it
    decides as a tick would (activation, and as many instances as the waiting requests need at once, not one);
    while every instance is still starting, only to add instances the waiting requests need beyond theirs (the
    rest of a burst that arrived after the first poke was answered). Once an instance is ready, the ticks decide.
    """
    if seen.ready:
        return None
    decision = decide(spec, state, seen, now)
    if seen.current and decision.desired <= seen.current:
        return None
    return decision


def _panic(state: ScalerState, desired: int, want: Want, *, note: str, triggered: bool) -> tuple[int, str, ScalerState]:
    """In panic: ratchet the windowed demand into `panic_held` while the condition holds; never go below it."""
    if triggered:
        state = replace(state, panic_held=max(state.panic_held, desired))
    held = max(desired, state.panic_held)
    shown = max(held, want.count)
    why = f"{note} → {shown}" if note else f"panic: holds {held}, no scale-down while panicking"
    return held, why if want.count >= held else f"{why} ({want.detail})", state


def _active(state: ScalerState, *, active: bool, now: float) -> ScalerState:
    """`last_active` moved to `now` on activity, remembering the idle gap it ends."""
    if not active:
        return state
    gaps = state.gaps
    if state.last_active is not None and now - state.last_active > GAP_MIN_S:
        gaps = (*gaps, now - state.last_active)[-KEEP_GAPS:]
    return replace(state, last_active=now, gaps=gaps)


def keep_alive_s(spec: ScalingSpec, gaps: tuple[float, ...]) -> float:
    """How long an idle version keeps an instance: the grace, or twice the longest recent gap if that is short.

    E.g. with a 60 s grace: gaps (40, 70, 55) keep 140 s; gaps (40, 400) keep 60 s (800 s > 5 graces).
    """
    grace = spec.scale_to_zero_grace_s
    if not gaps:
        return grace
    wanted = KEEP_FACTOR * max(gaps)
    return max(grace, wanted) if wanted <= KEEP_MAX_GRACES * grace else grace


def _worded(why: str, want: Want, *, desired: int, seen: Observation, note: str) -> str:
    """The final reason: a verb when the metric alone decided, waking from zero said so, a mode change first."""
    if why == want.detail:
        verb = "up" if desired > seen.current else "down" if desired < seen.current else "steady"
        why = f"{verb}: {why}"
    if seen.current == 0 and desired > 0 and (seen.in_flight or seen.queued or seen.completed or seen.poked):
        waiting = seen.in_flight + seen.queued or 1
        why = f"activate: {waiting} request(s) waiting, 0 instances → {desired} ({want.detail})"
    return f"{note}; {why}" if note else why


def _values(seen: Observation) -> dict[Metric, float | None]:
    qps = seen.qps
    if qps is None and seen.interval_s > 0:
        qps = seen.completed / seen.interval_s
    return {Metric.CONCURRENCY: seen.concurrency, Metric.QPS: qps, Metric.CPU: seen.cpu, Metric.MEMORY: seen.memory}


def _begin(spec: ScalingSpec, state: ScalerState, seen: Observation, now: float) -> tuple[ScalerState, str, int]:
    """The state of a first decision: found instances (a restart) or `initial_scale` (a deploy) count as wanted."""
    if state.started:
        return state, "", 0
    if seen.current > 0:
        kept = ScalerState(((now, seen.current),), now, True, restarted_at=now, restarted_with=seen.current)
        return kept, f"found: keeps the {seen.current} running instance(s) until metrics are fresh", seen.current
    initial = min(spec.initial_scale, spec.max)
    if initial <= 0:
        return ScalerState(started=True), "", 0
    return ScalerState(((now, initial),), now, True), f"initial: initial_scale {initial} on a first deploy", initial


def _mode(
    spec: ScalingSpec, state: ScalerState, *, trigger: str, stable: Want, calm: str, current: int, now: float
) -> tuple[Mode, ScalerState, str]:
    """Enter panic on the trigger; leave after a quiet stable window, once the stable window has caught up, or
    when the version has been idle past its keep-alive (`calm`: nothing is left to protect)."""
    if trigger:
        panic_held = state.panic_held if state.panic_last is not None else current
        return Mode.PANIC, replace(state, panic_last=now, panic_held=panic_held), trigger
    if state.panic_last is None:
        return Mode.STABLE, state, ""
    quiet_s = now - state.panic_last
    if quiet_s >= spec.stable_window_s:
        note = f"panic over: no panic condition for {quiet_s:.0f} s ≥ stable window {spec.stable_window_s:g} s"
    elif stable.count >= state.panic_held:
        note = f"panic over: the stable window wants {stable.count} ≥ {state.panic_held} held in panic"
    elif calm:
        note = f"panic over: {calm}"
    else:
        return Mode.PANIC, state, ""
    # What panic held stays a recommendation made now: the scale-down delay still applies to it.
    recommendations = (*state.recommendations, (now, state.panic_held))
    return Mode.STABLE, replace(state, panic_last=None, panic_held=0, recommendations=recommendations), note


def _delay(spec: ScalingSpec, state: ScalerState, want: Want, *, now: float) -> tuple[int, str, ScalerState]:
    """Up at once; down only to the highest recommendation within `scale_down_delay_s` ("" = the metric's count)."""
    kept = [item for item in state.recommendations if now - item[0] < spec.scale_down_delay_s]
    # A sliding-window maximum: a recommendation no larger than a later one can never be the maximum again.
    while kept and kept[-1][1] <= want.count:
        kept.pop()
    recommendations = (*kept, (now, want.count))
    held = max(count for _, count in recommendations)
    state = replace(state, recommendations=recommendations)
    if held > want.count:
        delay = f"{spec.scale_down_delay_s:g} s"
        return held, f"hold: scale_down_delay {delay} keeps {held}, the highest seen (now {want.detail})", state
    return held, "", state


def _rates(spec: ScalingSpec, desired: int, why: str, *, current: int) -> tuple[int, str]:
    base = max(current, 1)
    up_to = math.ceil(spec.max_scale_up_rate * base - 1e-9)
    if desired > up_to:
        return up_to, f"rate: max_scale_up_rate {spec.max_scale_up_rate:g} × {base} allows {up_to} ({why})"
    down_to = math.floor(current / spec.max_scale_down_rate + 1e-9) if spec.max_scale_down_rate > 0 else current
    if desired < down_to:
        rate = spec.max_scale_down_rate
        return down_to, f"rate: max_scale_down_rate {rate:g} keeps {down_to} of {current} ({why})"
    return desired, why


def _idle(spec: ScalingSpec, desired: int, why: str, *, current: int, idle_s: float, keep_s: float) -> tuple[int, str]:
    """At no demand: no instances stays none; within the keep-alive one stays; after it, zero."""
    if desired > 0:
        return desired, why
    if current == 0:
        return 0, "idle: no traffic, no instances"
    grace = f"scale_to_zero_grace {spec.scale_to_zero_grace_s:g} s"
    if keep_s > spec.scale_to_zero_grace_s:
        grace = f"keep-alive {keep_s:.0f} s (2 × the longest recent idle gap)"
    if idle_s < keep_s:
        return 1, f"grace: idle {idle_s:.0f} s < {grace} keeps 1"
    return 0, f"zero: idle {idle_s:.0f} s ≥ {grace}" if idle_s < math.inf else f"zero: never active, {grace}"


def _restarted(spec: ScalingSpec, state: ScalerState, desired: int, why: str, *, now: float) -> tuple[int, str]:
    """For a panic window after a restart, keep the instances found: no scale-down on a metric or two."""
    if state.restarted_at is None or desired >= state.restarted_with:
        return desired, why
    age = now - state.restarted_at
    if age >= spec.panic_window_s:
        return desired, why
    window = f"{spec.panic_window_s:g} s"
    return state.restarted_with, f"found: {age:.0f} s of metrics < {window} keeps {state.restarted_with} ({why})"


def _bounds(spec: ScalingSpec, desired: int, why: str, *, now: float) -> tuple[int, str]:
    """`activation_scale` when not at zero, `min` raised by open schedules, then `max`."""
    if 0 < desired < spec.activation_scale:
        desired, why = spec.activation_scale, f"activation: activation_scale {spec.activation_scale} ({why})"
    scheduled = minimum_at(spec.schedules, now) if spec.schedules else 0
    floor = max(spec.min, scheduled)
    if desired < floor:
        if scheduled > spec.min:
            desired, why = scheduled, f"schedule: min {scheduled} while a scheduled window is open ({why})"
        else:
            desired, why = spec.min, f"min: {spec.min} reserved ({why})"
    if desired > spec.max:
        return spec.max, f"max: capped at max {spec.max} ({why})"
    return desired, why
