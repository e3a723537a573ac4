"""The scaling policies the simulator compares, each a small stateful object behind one `Policy` protocol.

- `NestPolicy` wraps `autoscaler.decision.decide`, the same code `autoscaler/loop.py` runs live, with the same
  spec defaults; only the per-instance target and `max` come from the simulation's settings.
- `KpaPolicy` is Knative's KPA from its public source and defaults (see its docstring for the citations).
- `KeepAlivePolicy` is Lambda-like: an instance per concurrent need, each kept warm a fixed time after use.
- `StaticPolicy` keeps N instances always on and scales reactively above N.

Pure: no I/O, no clock reads; `model.py` feeds every policy an `Observation` once per `tick_s` and on a poke.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

from autoscaler.decision import Observation, ScalerState, answer_poke, decide
from nest.contracts.errors import InvalidInput
from nest.contracts.model import ScalingSpec

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_INSTANCES = 1000
"""The simulator's `max` for every policy: KPA's default max-scale is 0 (unbounded), so no policy is capped."""
POLICY_NAMES = "nest, kpa, keepalive-<duration> (e.g. keepalive-10m) or static-<N> (e.g. static-2)"


@dataclass(frozen=True, slots=True)
class Verdict:
    desired: int
    reason: str
    mode: str = "stable"


class Policy(Protocol):
    """One function's scaler: `decide` once per `tick_s`; `poke` when a request waits with no ready capacity."""

    tick_s: float

    def decide(self, seen: Observation, now: float) -> Verdict: ...

    def poke(self, seen: Observation, now: float) -> Verdict | None: ...


def nest_spec(*, concurrency: int, start_latency_s: float, **overrides: Any) -> ScalingSpec:
    """The live defaults of `ScalingSpec`, aimed at `concurrency` per instance, uncapped, with `overrides`."""
    spec = ScalingSpec(target_concurrency=float(concurrency), max=MAX_INSTANCES, start_latency_s=start_latency_s)
    unknown = set(overrides) - {item.name for item in fields(ScalingSpec)}
    if unknown:
        raise InvalidInput("policy", f"ScalingSpec has no field(s) {sorted(unknown)}")
    return replace(spec, **overrides)


class NestPolicy:
    """Nest's own `decide`, ticked every second, poked as `autoscaler/loop.py` is (while no instance is ready)."""

    def __init__(self, spec: ScalingSpec, *, tick_s: float = 1.0) -> None:
        self.spec = spec
        self.tick_s = tick_s
        self._state = ScalerState()

    def decide(self, seen: Observation, now: float) -> Verdict:
        decision = decide(self.spec, self._state, seen, now)
        self._state = decision.state
        return Verdict(decision.desired, decision.reason, decision.mode.value)

    def poke(self, seen: Observation, now: float) -> Verdict | None:
        # As `Autoscaler.answer_pokes`: the requests waiting now, while no instance is ready.
        decision = answer_poke(self.spec, self._state, seen, now)
        if decision is None:
            return None
        self._state = decision.state
        return Verdict(decision.desired, decision.reason, decision.mode.value)


class _Buckets:
    """Knative's `TimedFloat64Buckets` at 1 s granularity (pkg/autoscaler/aggregation/bucketing.go).

    `average(now)` follows `WindowAverage`: over the partial window since the first write when that is shorter
    than the window; over the window up to the last write when data stopped arriving (Knative: "if the window
    is 60 seconds but we last received data 10 seconds ago, the window average will be the average over the
    first 50 seconds"); None (`ErrNoData`) when nothing was written for a whole window, which also resets the
    first write.
    """

    def __init__(self, window_s: float) -> None:
        self.size = max(1, math.ceil(window_s))
        self.values: dict[int, float] = {}
        self.first: int | None = None
        self.last: int | None = None

    def record(self, second: int, value: float) -> None:
        if self.last is not None and second - self.last > self.size:
            self.first, self.values = None, {}
        if self.first is None:
            self.first = second
        self.values[second] = value
        self.last = second if self.last is None else max(self.last, second)
        for old in [key for key in self.values if key <= second - self.size]:
            del self.values[old]

    def average(self, now: int) -> float | None:
        if self.last is None or self.first is None or now - self.last > self.size:
            return None
        end = min(now, self.last)
        count = min(self.size - max(0, now - self.last), end - self.first + 1)
        if count <= 0:
            return None
        return sum(self.values.get(second, 0.0) for second in range(end - count + 1, end + 1)) / count


@dataclass(frozen=True, slots=True)
class KpaConfig:
    """Knative Serving's `config-autoscaler` defaults (config/core/configmaps/autoscaler.yaml).

    stable-window 60s; panic-window-percentage 10.0 (6 s); panic-threshold-percentage 200.0;
    container-concurrency-target-percentage 70; max-scale-up-rate 1000.0; max-scale-down-rate 2.0;
    scale-to-zero-grace-period 30s; scale-down-delay 0s; initial-scale 1; the autoscaler ticks every 2 s
    (`tickInterval` in pkg/autoscaler/scaling/multiscaler.go).
    """

    target: float = 7.0
    """Per-pod target concurrency: containerConcurrency × 70%."""
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    scale_down_delay_s: float = 0.0
    initial_scale: int = 1
    tick_s: float = 2.0


@dataclass(slots=True)
class KpaState:
    panic_since: float | None = None
    max_panic_pods: int = 0
    started: bool = False
    active_since: float = 0.0
    inactive_since: float | None = None
    delays: deque[tuple[float, int]] = field(default_factory=deque)


class KpaPolicy:
    """Knative's KPA: `Scale()` of pkg/autoscaler/scaling/autoscaler.go plus the KPA reconciler's scale to zero.

    Per tick: stable (60 s) and panic (6 s) window averages of the concurrency reported each second;
    `dspc = ceil(stable / target)`, `dppc = ceil(panic / target)`, both clamped to
    `[floor(ready / max_scale_down_rate), ceil(max_scale_up_rate * ready)]` with `ready = max(1, ready pods)`.
    Panic starts (or is extended) when `dppc / ready >= panic_threshold`; it ends only once not over the
    threshold for a whole stable window; while panicking the count never drops (`maxPanicPods`) and is the larger
    of the stable and panic counts. No data in the stable window (`ErrNoData`) leaves the scale alone.
    Scale to zero (pkg/reconciler/autoscaling/kpa/scaler.go `handleScaleToZero`): a desired 0 first needs the
    revision active for a stable window (else it keeps 1), then marks it inactive, and only after
    `scale-to-zero-grace-period` more does the count reach 0. The activator's stat for a revision at zero pokes
    a decision at once (`MultiScaler.Poke`).
    """

    def __init__(self, config: KpaConfig) -> None:
        self.config = config
        self.tick_s = config.tick_s
        self._stable = _Buckets(config.stable_window_s)
        self._panic = _Buckets(config.panic_window_s)
        self.state = KpaState()

    def decide(self, seen: Observation, now: float) -> Verdict:
        second = round(now)
        reporting = seen.current > 0 or seen.concurrency > 0 or seen.in_flight + seen.queued > 0
        if reporting:
            # Each instance's queue-proxy reports every second (zeros included); the activator reports what it holds.
            for offset in range(max(1, round(seen.interval_s))):
                self._stable.record(second - offset, seen.concurrency)
                self._panic.record(second - offset, seen.concurrency)
        return self._scale(seen, now, second)

    def poke(self, seen: Observation, now: float) -> Verdict | None:
        if seen.current:
            return None
        second = round(now)
        waiting = float(seen.in_flight + seen.queued)
        for window in (self._stable, self._panic):
            window.record(second, max(waiting, window.values.get(second, 0.0)))
        return self._scale(seen, now, second)

    def _scale(self, seen: Observation, now: float, second: int) -> Verdict:
        config, state = self.config, self.state
        if not state.started:
            state.started, state.active_since = True, now
            if config.initial_scale and not seen.current:
                return Verdict(config.initial_scale, f"initial-scale {config.initial_scale}")
        stable, panic = self._stable.average(second), self._panic.average(second)
        if stable is None:
            return Verdict(seen.current, "no data in the stable window: scale unchanged")
        ready = seen.current if seen.ready is None else seen.ready
        desired, reason, mode = self.scale(
            stable=stable, panic=stable if panic is None else panic, ready=ready, now=now
        )
        return self._to_zero(desired, seen, now, reason, mode)

    def scale(self, *, stable: float, panic: float, ready: int, now: float) -> tuple[int, str, str]:
        """Knative's `Scale()` from the window averages and the ready pod count: (desired, reason, mode)."""
        config, state = self.config, self.state
        pods = float(max(1, ready))  # "Use 1 if there are zero current pods."
        up_limit = math.ceil(config.max_scale_up_rate * pods)
        down_limit = math.floor(pods / config.max_scale_down_rate)
        dspc, dppc = math.ceil(stable / config.target - 1e-9), math.ceil(panic / config.target - 1e-9)
        desired = min(max(dspc, down_limit), up_limit)
        if dppc / pods >= config.panic_threshold:
            state.panic_since = now  # start, or extend, the panic
        elif state.panic_since is not None and state.panic_since + config.stable_window_s < now:
            state.panic_since, state.max_panic_pods = None, 0  # the surge has made its way into the stable window
        mode = "stable"
        if state.panic_since is not None:
            mode = "panic"
            desired = max(desired, min(max(dppc, down_limit), up_limit))
            state.max_panic_pods = max(state.max_panic_pods, desired)  # never scale down while panicking
            desired = state.max_panic_pods
        desired = self._delay(desired, now)
        return desired, f"{mode}: stable {stable:.1f} panic {panic:.1f} / target {config.target:g} → {desired}", mode

    def _delay(self, desired: int, now: float) -> int:
        if self.config.scale_down_delay_s <= 0:
            return desired
        delays = self.state.delays
        while delays and delays[0][0] <= now - self.config.scale_down_delay_s:
            delays.popleft()
        delays.append((now, desired))
        return max(count for _, count in delays)

    def _to_zero(self, desired: int, seen: Observation, now: float, reason: str, mode: str) -> Verdict:
        state, config = self.state, self.config
        if desired > 0 or seen.current == 0:
            if desired > 0 and state.inactive_since is not None:
                state.inactive_since, state.active_since = None, now
            if desired > 0 and seen.current == 0:
                state.active_since = now
            return Verdict(desired, reason, mode)
        if state.inactive_since is None:
            if now - state.active_since < config.stable_window_s:
                return Verdict(1, f"{reason}; active < stable window keeps 1", mode)
            state.inactive_since = now
        if now - state.inactive_since >= config.scale_to_zero_grace_s:
            return Verdict(0, f"{reason}; inactive ≥ grace {config.scale_to_zero_grace_s:g}s", mode)
        return Verdict(seen.current, f"{reason}; inactive, within grace {config.scale_to_zero_grace_s:g}s", mode)


class KeepAlivePolicy:
    """Lambda-like: a new instance for each concurrent need at once, each kept warm `keep_s` after its last use.

    Counted, not tracked per instance: the instances used within `keep_s` are the most concurrent needs seen in
    that time, which is what a router that reuses the most recently used warm instance produces (AWS Lambda
    keeps idle execution environments for minutes; 10 is the figure the serverless literature uses).
    """

    def __init__(self, keep_s: float, *, concurrency: int) -> None:
        self.keep_s = keep_s
        self.concurrency = concurrency
        self.tick_s = 1.0
        self._needs: deque[tuple[float, int]] = deque()

    def decide(self, seen: Observation, now: float) -> Verdict:
        return self._need(seen, now)

    def poke(self, seen: Observation, now: float) -> Verdict | None:
        if seen.in_flight + seen.queued <= seen.current * self.concurrency:
            return None
        return self._need(seen, now)

    def _need(self, seen: Observation, now: float) -> Verdict:
        need = math.ceil((seen.in_flight + seen.queued) / self.concurrency)
        # A monotonic queue: a need no larger than a later one can never be the maximum again.
        while self._needs and self._needs[-1][1] <= need:
            self._needs.pop()
        self._needs.append((now, need))
        while self._needs[0][0] <= now - self.keep_s:
            self._needs.popleft()
        desired = self._needs[0][1]
        return Verdict(desired, f"keep-alive: {need} needed now, {desired} used within {self.keep_s:g}s")


class StaticPolicy:
    """`static-N`: N instances always on; above N, exactly the concurrent need (no delay, no window)."""

    def __init__(self, minimum: int, *, concurrency: int) -> None:
        self.minimum = minimum
        self.concurrency = concurrency
        self.tick_s = 1.0

    def decide(self, seen: Observation, now: float) -> Verdict:
        need = math.ceil((seen.in_flight + seen.queued) / self.concurrency)
        desired = max(self.minimum, need)
        return Verdict(desired, f"static: {self.minimum} always on, {need} needed now")

    def poke(self, seen: Observation, now: float) -> Verdict | None:
        if seen.in_flight + seen.queued <= seen.current * self.concurrency:
            return None
        return self.decide(seen, now)


_KEEPALIVE = re.compile(r"^keepalive-(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_STATIC = re.compile(r"^static-(\d{1,4})$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def make_policy(name: str, *, concurrency: int, start_latency_s: float) -> Callable[[], Policy]:
    """A factory of fresh per-function policies for `name`: `nest`, `kpa`, `keepalive-10m`, `static-2`."""
    text = name.strip().lower()
    if text == "nest":
        spec = nest_spec(concurrency=concurrency, start_latency_s=start_latency_s)
        return lambda: NestPolicy(spec)
    if text == "kpa":
        config = KpaConfig(target=concurrency * 0.7)
        return lambda: KpaPolicy(config)
    if match := _KEEPALIVE.match(text):
        keep_s = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        return lambda: KeepAlivePolicy(keep_s, concurrency=concurrency)
    if match := _STATIC.match(text):
        minimum = int(match.group(1))
        return lambda: StaticPolicy(minimum, concurrency=concurrency)
    raise InvalidInput("--policy", f"unknown policy {name!r} (expected {POLICY_NAMES})")


def tuned(spec: ScalingSpec, **overrides: Any) -> Callable[[], Policy]:
    """A Nest policy factory with spec fields changed, for parameter sweeps."""
    changed = replace(spec, **overrides)
    return lambda: NestPolicy(changed)
