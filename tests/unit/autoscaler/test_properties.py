"""Properties of `decide` over random specs and random traffic (Hypothesis)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from autoscaler.decision import Decision, Mode, Observation, ScalerState, answer_poke, decide
from nest.contracts.model import ScalingSpec

T0 = 1_800_000_000.0


@st.composite
def specs(draw: st.DrawFn) -> ScalingSpec:
    maximum = draw(st.integers(1, 20))
    stable = draw(st.floats(6, 60))
    return ScalingSpec(
        min=draw(st.integers(0, maximum)),
        max=maximum,
        target_concurrency=draw(st.floats(1, 20)),
        utilization=draw(st.floats(0.5, 1.0)),
        scale_down_delay_s=draw(st.floats(0, 60)),
        scale_to_zero_grace_s=draw(st.floats(0, 120)),
        stable_window_s=stable,
        panic_window_s=draw(st.floats(1, stable)),
        panic_threshold=draw(st.floats(1.5, 3.0)),
        max_scale_down_rate=draw(st.floats(1.0, 4.0)),
        initial_scale=draw(st.integers(0, maximum)),
        activation_scale=draw(st.integers(1, maximum)),
        prediction=draw(st.booleans()),
        start_latency_s=draw(st.floats(0, 5)),
    )


@dataclass(frozen=True)
class Step:
    after_s: float
    seen: Observation


@st.composite
def traffic(draw: st.DrawFn, maximum: int) -> list[Step]:
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        after_s = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 2.0, 7.0, 30.0]))
        poked = draw(st.booleans()) and after_s == 0
        in_flight, queued = draw(st.integers(0, 60)), draw(st.integers(0, 20))
        concurrency = draw(st.floats(0, 80))
        seen = Observation(
            concurrency,
            in_flight,
            queued,
            draw(st.integers(0, 50)),
            draw(st.integers(0, maximum)),
            poked,
            interval_s=0.0 if poked else after_s,
        )
        steps.append(Step(after_s, seen))
    return steps


def replay(spec: ScalingSpec, steps: list[Step]) -> list[tuple[float, Observation, Decision]]:
    state, now, out = ScalerState(), T0, []
    for step in steps:
        now += step.after_s
        decision = decide(spec, state, step.seen, now)
        out.append((now, step.seen, decision))
        state = decision.state
    return out


def demand(spec: ScalingSpec, seen: Observation) -> int:
    """The instant demand: what is in flight and queued now, against 100% of the target (a request waits only once
    every slot is taken)."""
    waiting = seen.in_flight + seen.queued
    return math.ceil(waiting / spec.target_concurrency - 1e-9) if waiting else 0


def scenarios() -> st.SearchStrategy[tuple[ScalingSpec, list[Step]]]:
    return specs().flatmap(lambda spec: st.tuples(st.just(spec), traffic(spec.max)))


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_desired_stays_within_min_and_max(scenario: tuple[ScalingSpec, list[Step]]) -> None:
    spec, steps = scenario
    for _, _, decision in replay(spec, steps):
        assert spec.min <= decision.desired <= spec.max


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_scale_up_meets_the_demand_within_the_tick(scenario: tuple[ScalingSpec, list[Step]]) -> None:
    spec, steps = scenario
    for _, seen, decision in replay(spec, steps):
        assert decision.desired >= min(spec.max, demand(spec, seen))


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_no_scale_down_while_panicking(scenario: tuple[ScalingSpec, list[Step]]) -> None:
    # What a panic holds never shrinks while it lasts: the instances found on entering it, then every windowed
    # demand it ratcheted in. (Instances the instant queue term added on top are not held, as in stable mode.)
    spec, steps = scenario
    floor: int | None = None
    for _, seen, decision in replay(spec, steps):
        if decision.mode is not Mode.PANIC:
            floor = None
            continue
        floor = seen.current if floor is None else floor
        assert decision.desired >= min(spec.max, floor)
        assert decision.state.panic_held >= floor
        floor = decision.state.panic_held


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_no_scale_down_below_the_windowed_demand_seen_within_the_delay(
    scenario: tuple[ScalingSpec, list[Step]],
) -> None:
    spec, steps = scenario
    seen_at: list[tuple[float, int]] = []
    for now, _, decision in replay(spec, steps):
        seen_at.extend(decision.state.recommendations[-1:])
        recent = [count for at, count in seen_at if now - at < spec.scale_down_delay_s or at == now]
        assert decision.desired >= min(spec.max, max(recent, default=0))


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_zero_only_after_the_grace(scenario: tuple[ScalingSpec, list[Step]]) -> None:
    spec, steps = scenario
    last_active: float | None = None
    for index, (now, seen, decision) in enumerate(replay(spec, steps)):
        if index == 0 and (seen.current > 0 or spec.initial_scale > 0):
            last_active = now  # a restart or a deploy starts the grace
        if seen.in_flight or seen.queued or seen.completed or seen.poked:
            last_active = now
        if decision.desired == 0 and seen.current > 0 and last_active is not None:
            assert now - last_active >= spec.scale_to_zero_grace_s
        if seen.in_flight or seen.queued:
            assert decision.desired > 0, "idle means idle: in-flight or queued work keeps an instance"


@settings(max_examples=80, deadline=None)
@given(scenarios())
def test_the_same_inputs_give_the_same_decision(scenario: tuple[ScalingSpec, list[Step]]) -> None:
    spec, steps = scenario
    first, second = replay(spec, steps), replay(spec, steps)
    assert [decision for _, _, decision in first] == [decision for _, _, decision in second]
    state, now = ScalerState(), T0
    for step in steps:
        now += step.after_s
        once, again = decide(spec, state, step.seen, now), decide(spec, state, step.seen, now)
        assert once == again
        state = once.state


@settings(max_examples=300, deadline=None)
@given(specs(), st.integers(0, 20), st.integers(0, 20), st.integers(1, 200))
def test_a_poke_never_removes_instances_and_only_acts_while_none_is_ready(
    spec: ScalingSpec, current: int, ready: int, waiting: int
) -> None:
    ready = min(ready, current)
    seen = Observation(0.0, 0, waiting, 0, current, poked=True, ready=ready, interval_s=0.0)
    decision = answer_poke(spec, ScalerState(started=True), seen, T0)
    if ready:
        assert decision is None
    elif decision is not None:
        assert decision.desired > current
        assert decision.desired <= spec.max
