"""The discrete-event model: a trace's requests, instances that take time to start, and the activator's queue.

Virtual clock only. Per function, events happen in time order (ties: completions, then readiness, then
arrivals, then the policy's tick):

- an arrival goes to the ready instance with the fewest in flight if one has a free slot (`concurrency` per
  instance) and nobody queues before it, as `gateway/balancing.py` picks; otherwise it joins the activator's
  FIFO queue and the policy is poked (as the live activator pokes the autoscaler when a request waits);
- a freed slot or a newly ready instance takes requests from the head of the queue;
- every `policy.tick_s` the policy sees an `Observation` of the tick (time-weighted in-flight plus queued,
  in-flight and queued at its end, completions, instances, ready ones) and returns a desired count;
- scaling up starts instances that are ready `start_latency_s` later; scaling down removes starting instances
  first, then idle ones, then drains the least busy (it serves what it holds, then goes).

Pure: no I/O, no clock reads. `simulate` is the entry point; `report.py` turns the outcome into figures.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autoscaler.decision import Observation
from autoscaler.simulation.policies import NestPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from autoscaler.simulation.policies import Policy, Verdict
    from autoscaler.simulation.traces import Request, Trace
    from nest.contracts.model import ScalingSpec

WAITED_S = 1e-9
"""A request that waited longer than this for a slot counts as delayed (float noise aside, any wait at all)."""
OVERRUN_S = 3600.0
"""Ticks go on past the horizon while requests remain, for at most this long (a policy that never scales up)."""
_COMPLETE, _READY, _ARRIVE, _TICK = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Settings:
    """What every policy is modelled with alike."""

    concurrency: int = 10
    """Requests one instance serves at once; policies aim at this × their utilisation target."""
    start_latency_s: float = 0.05
    """From a scale-up decision to a ready instance (Nest's warm-pool cold start is ~10-50 ms)."""
    horizon_s: float | None = None
    """Measure until here; None is when the trace's last request finishes."""


@dataclass(frozen=True, slots=True)
class Tick:
    time: float
    desired: int
    current: int
    """Instances existing after the decision was applied (ready or starting)."""
    ready: int


@dataclass(frozen=True, slots=True)
class Change:
    """A decision that changed the desired count, for the decision log."""

    time: float
    function: str
    desired: int
    reason: str
    mode: str


@dataclass(slots=True)
class FunctionOutcome:
    function: str
    waits: list[float] = field(default_factory=list)
    cold: int = 0
    """Requests that waited and were served by an instance that was not ready yet when they arrived."""
    instance_seconds: float = 0.0
    idle_instance_seconds: float = 0.0
    scale_events: int = 0
    changes: list[Change] = field(default_factory=list)
    timeline: list[Tick] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Outcome:
    trace: str
    policy: str
    settings: Settings
    functions: tuple[FunctionOutcome, ...]

    def timeline(self) -> list[Tick]:
        """Ticks summed over functions (same tick times for every function of one policy)."""
        merged: dict[float, list[int]] = {}
        for function in self.functions:
            for tick in function.timeline:
                total = merged.setdefault(tick.time, [0, 0, 0])
                total[0] += tick.desired
                total[1] += tick.current
                total[2] += tick.ready
        return [Tick(time, *counts) for time, counts in sorted(merged.items())]


class _Instance:
    __slots__ = ("created", "draining", "in_flight", "ready", "ready_at")

    def __init__(self, created: float, ready_at: float) -> None:
        self.created = created
        self.ready_at = ready_at
        self.ready = False
        self.draining = False
        self.in_flight = 0


class _Run:
    """One function's replay: the event loop and its accounting."""

    def __init__(self, requests: Sequence[Request], policy: Policy, settings: Settings, *, function: str) -> None:
        self.requests = requests
        self.policy = policy
        self.settings = settings
        self.out = FunctionOutcome(function)
        self.now = 0.0
        self.live: list[_Instance] = []
        self.draining: list[_Instance] = []
        self.queue: deque[tuple[float, float]] = deque()
        self.events: list[tuple[float, int, int, _Instance]] = []
        self.sequence = 0
        self.in_flight = 0
        self.completed = 0
        self.load_area = 0.0
        self.desired = 0

    def run(self, horizon_s: float) -> FunctionOutcome:
        tick_s = self.policy.tick_s
        next_tick, index, total = tick_s, 0, len(self.requests)
        while True:
            pending = self.in_flight or self.queue or index < total
            if next_tick > horizon_s + 1e-9 and (not pending or next_tick > horizon_s + OVERRUN_S):
                break
            candidates = [(next_tick, _TICK)]
            if self.events:
                candidates.append((self.events[0][0], self.events[0][1]))
            if index < total:
                candidates.append((self.requests[index].arrival_s, _ARRIVE))
            at, kind = min(candidates)
            self._advance(at)
            if kind == _TICK:
                self._tick(tick_s)
                next_tick = round(next_tick + tick_s, 9)
            elif kind == _ARRIVE:
                request = self.requests[index]
                index += 1
                self._arrive(request.arrival_s, request.duration_s)
            else:
                _, kind, _, instance = heapq.heappop(self.events)
                self._complete(instance) if kind == _COMPLETE else self._ready(instance)
        self._advance(max(self.now, horizon_s))
        self.out.waits.extend(self.now - arrival for arrival, _ in self.queue)  # never served: waited to the end
        for instance in [*self.live, *self.draining]:
            self.out.instance_seconds += self.now - instance.created
        return self.out

    def _advance(self, to: float) -> None:
        elapsed = to - self.now
        if elapsed > 0:
            self.load_area += elapsed * (self.in_flight + len(self.queue))
            idle = sum(1 for item in self.live if item.in_flight == 0) + sum(
                1 for item in self.draining if item.in_flight == 0
            )
            self.out.idle_instance_seconds += elapsed * idle
            self.now = to

    def _push(self, at: float, kind: int, instance: _Instance) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, kind, self.sequence, instance))

    def _arrive(self, arrival: float, duration: float) -> None:
        if not self.queue:
            instance = self._free_instance()
            if instance is not None:
                self._start(instance, arrival, duration)
                return
        self.queue.append((arrival, duration))
        verdict = self.policy.poke(self._observe(interval_s=0.0, poked=True), self.now)
        if verdict is not None:
            self._apply(verdict)

    def _free_instance(self) -> _Instance | None:
        best: _Instance | None = None
        for instance in self.live:
            free = instance.ready and instance.in_flight < self.settings.concurrency
            if free and (best is None or instance.in_flight < best.in_flight):
                best = instance
        return best

    def _start(self, instance: _Instance, arrival: float, duration: float) -> None:
        instance.in_flight += 1
        self.in_flight += 1
        self.out.waits.append(self.now - arrival)
        if instance.ready_at > arrival and self.now > arrival:
            self.out.cold += 1
        self._push(self.now + duration, _COMPLETE, instance)

    def _serve_queue(self, instance: _Instance) -> None:
        while self.queue and instance.ready and not instance.draining:
            if instance.in_flight >= self.settings.concurrency:
                return
            self._start(instance, *self.queue.popleft())

    def _complete(self, instance: _Instance) -> None:
        instance.in_flight -= 1
        self.in_flight -= 1
        self.completed += 1
        if instance.draining:
            if instance.in_flight == 0:
                self.draining.remove(instance)
                self.out.instance_seconds += self.now - instance.created
            return
        self._serve_queue(instance)

    def _ready(self, instance: _Instance) -> None:
        if instance in self.live:
            instance.ready = True
            self._serve_queue(instance)

    def _observe(self, *, interval_s: float, poked: bool = False) -> Observation:
        point = float(self.in_flight + len(self.queue))
        return Observation(
            concurrency=self.load_area / interval_s if interval_s > 0 else point,
            in_flight=self.in_flight,
            queued=len(self.queue),
            completed=self.completed,
            current=len(self.live),
            poked=poked,
            ready=sum(1 for item in self.live if item.ready),
            qps=self.completed / interval_s if interval_s > 0 else None,
            interval_s=interval_s,
        )

    def _tick(self, tick_s: float) -> None:
        seen = self._observe(interval_s=tick_s)
        self.load_area, self.completed = 0.0, 0
        self._apply(self.policy.decide(seen, self.now))
        ready = sum(1 for item in self.live if item.ready)
        self.out.timeline.append(Tick(self.now, self.desired, len(self.live), ready))

    def _apply(self, verdict: Verdict) -> None:
        desired = max(0, verdict.desired)
        if desired != self.desired:
            self.out.changes.append(Change(self.now, self.out.function, desired, verdict.reason, verdict.mode))
            self.desired = desired
        if desired == len(self.live):
            return
        self.out.scale_events += 1
        while len(self.live) < desired:
            instance = _Instance(self.now, self.now + self.settings.start_latency_s)
            self.live.append(instance)
            self._push(instance.ready_at, _READY, instance)
        while len(self.live) > desired:
            self._remove(min(self.live, key=_victim_order))

    def _remove(self, instance: _Instance) -> None:
        self.live.remove(instance)
        if instance.in_flight == 0:
            self.out.instance_seconds += self.now - instance.created
            return
        instance.draining = True
        self.draining.append(instance)


def _victim_order(instance: _Instance) -> tuple[bool, int, float]:
    # Starting ones first, then the idle, then the least busy; the newest first among equals.
    return (instance.ready, instance.in_flight, -instance.created)


def simulate(
    trace: Trace, policy: Callable[[], Policy], settings: Settings | None = None, *, name: str = ""
) -> Outcome:
    """Replay `trace` with a fresh policy per function; every function is measured to the same horizon.

    E.g. a step load's predicted instance counts, tick by tick:
    `[tick.current for tick in simulate(trace, make_policy("nest", concurrency=1, start_latency_s=0.05)).timeline()]`
    """
    settings = settings or Settings()
    horizon = settings.horizon_s if settings.horizon_s is not None else trace.end_s
    by_function: dict[str, list[Request]] = {}
    for request in trace.requests:
        by_function.setdefault(request.function, []).append(request)
    outcomes = []
    for function, requests in by_function.items():
        scaler = policy()
        end = math.ceil(horizon / scaler.tick_s) * scaler.tick_s
        outcomes.append(_Run(requests, scaler, settings, function=function).run(end))
    return Outcome(trace.name, name, settings, tuple(outcomes))


def predict_instances(
    spec: ScalingSpec, trace: Trace, *, concurrency: int, start_latency_s: float, horizon_s: float | None = None
) -> list[Tick]:
    """What the live autoscaler should do with `spec` under `trace`: instances per 1 s tick, from Nest's `decide`.

    For the integration test that drives a real `nest up`, e.g.
    `predict_instances(spec, step_load(1, 20, at_s=5, for_s=10, request_s=0.5), concurrency=1,
    start_latency_s=0.05, horizon_s=60)`; compare `tick.current` with the instances `nest describe` lists at the
    same offset (ticks are 1 s apart from 1 s after the trace's time 0).
    """
    settings = Settings(concurrency=concurrency, start_latency_s=start_latency_s, horizon_s=horizon_s)
    return simulate(trace, lambda: NestPolicy(spec), settings, name="nest").timeline()
