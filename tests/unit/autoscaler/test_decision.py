from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from autoscaler.decision import Observation, ScalerState, decide
from nest.contracts.model import ScalingSpec

SPEC = ScalingSpec(
    min=0, max=10, target_concurrency=10, utilization=0.7, scale_down_delay_s=30, scale_to_zero_grace_s=60
)


def observe(concurrency: float = 0.0, *, in_flight: int = 0, queued: int = 0, completed: int = 0, current: int = 0):
    return Observation(concurrency, in_flight, queued, completed, current)


def run(spec: ScalingSpec, steps: list[tuple[float, Observation]]) -> list[int]:
    state, desired = ScalerState(), []
    for now, seen in steps:
        decision = decide(spec, state, seen, now)
        state = decision.state
        desired.append(decision.desired)
    return desired


def test_desired_is_concurrency_over_seventy_percent_of_the_target() -> None:
    decision = decide(SPEC, ScalerState(), observe(14.5, in_flight=14, completed=20, current=1), 0.0)
    assert decision.desired == 3  # 14.5 / 7 = 2.07 -> 3
    assert decision.reason == "up: concurrency 14.5 / (10 × 0.7) → 3"


def test_a_waiting_request_with_no_instance_activates_one_at_once() -> None:
    decision = decide(SPEC, ScalerState(), Observation(0.0, 0, 1, 0, 0, poked=True), 0.0)
    assert decision.desired == 1
    assert decision.reason.startswith("activate")


def test_scale_down_waits_for_the_delay_window() -> None:
    busy = observe(30, in_flight=30, completed=100, current=5)
    quiet = observe(6, in_flight=6, completed=100, current=5)
    desired = run(SPEC, [(0, busy), (10, quiet), (29, quiet), (31, quiet)])
    assert desired == [5, 5, 5, 1]


def test_scale_to_zero_only_after_the_grace_with_nothing_in_flight() -> None:
    spec = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=60)
    steps = [
        (0.0, observe(1, in_flight=1, completed=1, current=1)),
        (30.0, observe(current=1)),
        (59.0, observe(current=1)),
        (61.0, observe(current=1)),
    ]
    assert run(spec, steps) == [1, 1, 1, 0]


def test_a_long_request_still_running_keeps_its_instance() -> None:
    spec = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=10)
    running = observe(1, in_flight=1, current=1)
    assert run(spec, [(float(t), running) for t in range(0, 100, 10)])[-1] == 1


def test_min_instances_are_kept_and_max_caps() -> None:
    spec = ScalingSpec(min=2, max=4, target_concurrency=1, utilization=1)
    assert decide(spec, ScalerState(), observe(current=2), 0).desired == 2
    capped = decide(spec, ScalerState(), observe(50, in_flight=50, current=2), 0)
    assert capped.desired == 4
    assert capped.reason.startswith("max")


def test_a_restart_does_not_scale_down_before_a_full_delay_of_fresh_metrics() -> None:
    idle = observe(current=4)
    assert run(SPEC, [(0, idle), (29, idle)]) == [4, 4]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ScalingSpec, list[tuple[float, Observation]]]:
    low = draw(st.integers(0, 3))
    spec = ScalingSpec(
        min=low,
        max=draw(st.integers(max(low, 1), 20)),
        target_concurrency=draw(st.sampled_from([1.0, 5.0, 10.0, 100.0])),
        utilization=draw(st.sampled_from([0.5, 0.7, 1.0])),
        scale_down_delay_s=draw(st.sampled_from([0.0, 5.0, 30.0])),
        scale_to_zero_grace_s=draw(st.sampled_from([0.0, 10.0, 60.0])),
    )
    now, steps = 0.0, []
    for _ in range(draw(st.integers(1, 30))):
        now += draw(st.sampled_from([0.5, 1.0, 1.0, 7.0, 40.0]))
        in_flight = draw(st.integers(0, 300))
        queued = draw(st.integers(0, 20))
        seen = Observation(
            concurrency=float(draw(st.integers(0, 300))),
            in_flight=in_flight,
            queued=queued,
            completed=draw(st.integers(0, 5)),
            current=draw(st.integers(0, 25)),
            poked=draw(st.booleans()),
        )
        steps.append((now, seen))
    return spec, steps


@settings(max_examples=300, derandomize=True)
@given(scenarios())
def test_properties_hold_on_every_tick(scenario: tuple[ScalingSpec, list[tuple[float, Observation]]]) -> None:
    spec, steps = scenario
    state = ScalerState()
    last_nonzero_demand: float | None = None
    for now, seen in steps:
        again = decide(spec, state, seen, now)
        decision = decide(spec, state, seen, now)
        assert decision == again, "the same inputs give the same decision"
        assert spec.min <= decision.desired <= spec.max
        demand = max(seen.concurrency, seen.in_flight + seen.queued)
        needed = -(-demand // (spec.target_concurrency * spec.utilization)) if demand else 0
        assert decision.desired >= min(needed, spec.max), "scale-up happens within the tick"
        if seen.queued or seen.poked:
            assert decision.desired >= 1
        if seen.in_flight or seen.queued or seen.completed or seen.poked or demand:
            last_nonzero_demand = now
        if decision.desired == 0 and seen.current > 0 and last_nonzero_demand is not None:
            assert now - last_nonzero_demand >= spec.scale_to_zero_grace_s, "zero only after the grace"
        state = decision.state


@example(delay=30.0, gap=29.0)
@given(st.floats(1, 120), st.floats(0, 200))
def test_no_scale_down_inside_the_delay(delay: float, gap: float) -> None:
    spec = ScalingSpec(max=100, target_concurrency=1, utilization=1, scale_down_delay_s=delay)
    first = decide(spec, ScalerState(), observe(10, in_flight=10, completed=1, current=10), 0.0)
    later = decide(spec, first.state, observe(2, in_flight=2, completed=1, current=10), gap)
    if gap < delay:
        assert later.desired == 10
    else:
        assert later.desired == 2
