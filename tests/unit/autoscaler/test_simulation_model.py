"""The discrete-event model against small traces computed by hand, with scripted policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings, strategies as st

from autoscaler.simulation.model import Settings, predict_instances, simulate
from autoscaler.simulation.policies import Verdict, make_policy, nest_spec
from autoscaler.simulation.report import figures
from autoscaler.simulation.traces import Request, Trace, step_load

if TYPE_CHECKING:
    from autoscaler.decision import Observation


@dataclass
class ScriptedPolicy:
    """Desired `count` from `since` on (0 before), and `count` on a poke at zero; records what it saw."""

    count: int
    since: float = 0.0
    until: float = float("inf")
    tick_s: float = 1.0
    seen: list[tuple[float, Observation]] = field(default_factory=list)

    def decide(self, seen: Observation, now: float) -> Verdict:
        self.seen.append((now, seen))
        return Verdict(self.count if self.since <= now < self.until else 0, "scripted")

    def poke(self, seen: Observation, now: float) -> Verdict | None:
        return Verdict(self.count, "poked") if seen.current == 0 and now < self.until else None


def run(requests: list[tuple[float, float]], policy: ScriptedPolicy, **settings: float):  # type: ignore[no-untyped-def]
    trace = Trace(tuple(Request(arrival, duration) for arrival, duration in requests), name="hand")
    return simulate(trace, lambda: policy, Settings(**settings), name="scripted")  # type: ignore[arg-type]


def test_a_request_at_zero_waits_for_the_cold_start() -> None:
    policy = ScriptedPolicy(count=1)
    outcome = run([(0.5, 1.0)], policy, concurrency=1, start_latency_s=0.2)
    result = figures(outcome)
    assert outcome.functions[0].waits == [pytest.approx(0.2)]
    assert (result.delayed, result.cold_delayed) == (1, 1)
    # Started at 0.5 (the poke), measured to the horizon 1.7 rounded up to the tick at 2.0.
    assert result.instance_seconds == pytest.approx(1.5)
    assert result.idle_instance_seconds == pytest.approx(0.2 + 0.3)


def test_the_queue_is_first_in_first_out_on_a_full_instance() -> None:
    policy = ScriptedPolicy(count=1)
    outcome = run([(0.0, 1.0), (0.1, 1.0), (0.2, 1.0)], policy, concurrency=1, start_latency_s=0.0)
    assert outcome.functions[0].waits == pytest.approx([0.0, 0.9, 1.8])
    result = figures(outcome)
    assert (result.delayed, result.cold_delayed) == (2, 0)


def test_per_instance_concurrency_lets_one_instance_serve_several() -> None:
    outcome = run([(0.0, 1.0), (0.1, 1.0), (0.2, 1.0)], ScriptedPolicy(count=1), concurrency=3, start_latency_s=0.0)
    assert outcome.functions[0].waits == [0.0, 0.0, 0.0]


def test_the_tick_sees_time_weighted_concurrency_and_completions() -> None:
    policy = ScriptedPolicy(count=1)
    run([(0.0, 0.5), (0.0, 0.25)], policy, concurrency=2, start_latency_s=0.0)
    now, seen = policy.seen[0]
    assert now == 1.0
    assert seen.concurrency == pytest.approx(0.75)  # 0.5 + 0.25 request-seconds over one second
    assert (seen.in_flight, seen.queued, seen.completed, seen.current) == (0, 0, 2, 1)


def test_scaling_down_drains_a_busy_instance_before_it_goes() -> None:
    policy = ScriptedPolicy(count=1, until=1.0)
    outcome = run([(0.0, 3.0)], policy, concurrency=1, start_latency_s=0.0)
    result = figures(outcome)
    # Desired 0 at the tick at 1 s, but the instance serves its request until 3 s.
    assert result.instance_seconds == pytest.approx(3.0)
    assert outcome.functions[0].timeline[0].current == 0


def test_scaling_down_removes_starting_instances_first() -> None:
    policy = ScriptedPolicy(count=2, until=1.0)
    outcome = run([(0.0, 3.0)], policy, concurrency=1, start_latency_s=0.0)
    assert figures(outcome).instance_seconds == pytest.approx(3.0 + 1.0)


def test_functions_are_scaled_apart_and_measured_to_one_horizon() -> None:
    trace = Trace((Request(0.0, 1.0, "a"), Request(0.0, 4.0, "b")), name="two")
    policy = make_policy("static-1", concurrency=1, start_latency_s=0.0)
    outcome = simulate(trace, policy, Settings(concurrency=1, start_latency_s=0.0))
    by_name = {item.function: item.instance_seconds for item in outcome.functions}
    assert by_name == {"a": pytest.approx(4.0), "b": pytest.approx(4.0)}
    assert [tick.current for tick in outcome.timeline()] == [2, 2, 2, 2]


def test_keepalive_starts_an_instance_per_concurrent_need_and_keeps_it() -> None:
    trace = Trace((Request(0.0, 1.0), Request(0.0, 1.0), Request(5.0, 1.0)), name="pair")
    policy = make_policy("keepalive-10s", concurrency=1, start_latency_s=0.1)
    outcome = simulate(trace, policy, Settings(concurrency=1, start_latency_s=0.1))
    result = figures(outcome)
    assert result.cold_delayed == 2  # the first two, each on its own new instance; the third finds one warm
    assert [tick.current for tick in outcome.timeline()][:6] == [2, 2, 2, 2, 2, 2]


def test_nest_policy_replays_the_live_decide_from_zero_and_back() -> None:
    requests = tuple(Request(1.0 + index * 0.05, 1.0) for index in range(200))  # 20 concurrent for 10 s
    trace = Trace(requests, name="step")
    policy = make_policy("nest", concurrency=1, start_latency_s=0.05)
    outcome = simulate(trace, policy, Settings(concurrency=1, start_latency_s=0.05, horizon_s=400.0))
    counts = [tick.current for tick in outcome.timeline()]
    assert max(counts) >= 20
    assert counts[-1] == 0
    assert figures(outcome).requests == 200


def test_step_load_keeps_the_callers_busy_back_to_back() -> None:
    trace = step_load(1, 4, at_s=2.0, for_s=1.0, request_s=0.5)
    arrivals = [request.arrival_s for request in trace.requests]
    assert arrivals == [0.0, 0.5, 1.0, 1.5, *[2.0] * 4, *[2.5] * 4]
    assert trace.end_s == 3.0


def test_predict_instances_follows_the_step_up_and_back_to_zero() -> None:
    spec = nest_spec(concurrency=1, start_latency_s=0.05)
    trace = step_load(1, 20, at_s=5.0, for_s=10.0, request_s=0.5)
    ticks = predict_instances(spec, trace, concurrency=1, start_latency_s=0.05, horizon_s=300.0)
    counts = [tick.current for tick in ticks]
    assert max(counts[5:17]) >= 20  # 20 callers at one request each per instance, aiming at 70%
    assert counts[-1] == 0


requests_strategy = st.lists(
    st.tuples(st.floats(0, 30, allow_nan=False), st.floats(0, 5, allow_nan=False)), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    requests=requests_strategy,
    policy=st.sampled_from(["nest", "kpa", "keepalive-20s", "static-1"]),
    concurrency=st.integers(1, 3),
)
def test_every_request_is_served_once_and_the_books_balance(
    requests: list[tuple[float, float]], policy: str, concurrency: int
) -> None:
    trace = Trace(tuple(Request(arrival, duration) for arrival, duration in sorted(requests)), name="random")
    factory = make_policy(policy, concurrency=concurrency, start_latency_s=0.1)
    outcome = simulate(trace, factory, Settings(concurrency=concurrency, start_latency_s=0.1))
    result = figures(outcome)
    assert result.requests == len(requests)
    assert all(wait >= 0 for wait in outcome.functions[0].waits)
    assert result.cold_delayed <= result.delayed
    # Instances pay at least for the work they carried, and idle time is part of their time.
    busy = sum(duration for _, duration in requests)
    assert result.instance_seconds * concurrency >= busy - 1e-6
    assert 0 <= result.idle_instance_seconds <= result.instance_seconds + 1e-6
