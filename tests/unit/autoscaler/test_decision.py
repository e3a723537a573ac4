"""`decide`, one reason at a time: a table of scenarios, each ending in the decision it must explain."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from autoscaler.decision import Decision, Mode, Observation, ScalerState, decide, keep_alive_s
from autoscaler.spec import Metric
from nest.contracts.model import ScalingSchedule, ScalingSpec

T0 = 1_800_000_000.0
MiB = 1024**2
STARTED = ScalerState(started=True)


def seen(
    concurrency: float = 0.0,
    *,
    in_flight: int | None = None,
    queued: int = 0,
    completed: int = 0,
    current: int = 0,
    interval_s: float = 1.0,
    **extra: float,
) -> Observation:
    """An interval's traffic; in flight defaults to the concurrency, as for a steady load."""
    flight = round(concurrency) if in_flight is None else in_flight
    active = completed or (5 if flight else 0)
    return Observation(concurrency, flight, queued, active, current, interval_s=interval_s, **extra)  # type: ignore[arg-type]


def run(spec: ScalingSpec, steps: list[tuple[float, Observation]], state: ScalerState = STARTED) -> list[Decision]:
    decisions = []
    for offset, observation in steps:
        decision = decide(spec, state, observation, T0 + offset)
        state = decision.state
        decisions.append(decision)
    return decisions


@dataclass(frozen=True)
class Case:
    name: str
    steps: list[tuple[float, Observation]]
    desired: int
    reason: str
    mode: Mode = Mode.STABLE
    metric: Metric | None = None
    spec: dict[str, object] = field(default_factory=dict)
    state: ScalerState = STARTED


def quiet(start: float, end: float, every: float, current: int) -> list[tuple[float, Observation]]:
    steps, now = [], start
    while now <= end:
        steps.append((now, seen(2.0, current=current, interval_s=every)))
        now += every
    return steps


MAY_4_0930 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC).timestamp() - T0

CASES = [
    Case(
        "up", [(0, seen(16.0, current=2))], 3, "up: 60 s concurrency 16.0 / (10 × 0.7) → 3", metric=Metric.CONCURRENCY
    ),
    Case("steady", [(0, seen(5.0, current=1))], 1, "steady: 60 s concurrency 5.0 / (10 × 0.7) → 1"),
    Case(
        "down",
        [(0, seen(5.0, current=2))],
        1,
        "down: 60 s concurrency 5.0 / (10 × 0.7) → 1",
        spec={"scale_down_delay_s": 0},
    ),
    Case(
        "hold within the scale-down delay",
        [(0, seen(13.0, current=2)), (1, seen(1.0, current=2))],
        2,
        "hold: scale_down_delay 30 s keeps 2, the highest seen (now 60 s concurrency 7.0 / (10 × 0.7) → 1)",
        spec={"scale_down_delay_s": 30},
    ),
    Case(
        "panic",
        [(0, seen(20.0, current=1))],
        3,
        "panic: 6 s concurrency 20.0 / (10 × 0.7) → 3 ≥ 2 × 1 instance(s) → 3",
        mode=Mode.PANIC,
        metric=Metric.CONCURRENCY,
    ),
    Case(
        "panic holds",
        [(0, seen(20.0, current=1)), (1, seen(2.0, current=3))],
        3,
        "panic: holds 3, no scale-down while panicking (6 s concurrency 11.0 / (10 × 0.7) → 2)",
        mode=Mode.PANIC,
    ),
    Case(
        "panic over after a quiet stable window",
        [(0, seen(20.0, current=1)), *quiet(10, 60, 10, current=3)],
        3,
        "panic over: no panic condition for 60 s ≥ stable window 60 s; hold:",
        spec={"scale_down_delay_s": 30},
    ),
    Case(
        "panic over once the stable window catches up",
        [(0, seen(20.0, current=1)), (1, seen(20.0, current=3))],
        3,
        "panic over: the stable window wants 3 ≥ 3 held in panic; steady:",
    ),
    Case(
        "panic over when idle for the grace",
        [(0, seen(20.0, current=1)), (6, seen(0.0, current=3, interval_s=6))],
        3,
        "panic over: idle 6 s ≥ keep-alive 5 s; hold: scale_down_delay 30 s keeps 3",
        spec={"scale_to_zero_grace_s": 5, "scale_down_delay_s": 30},
    ),
    Case(
        "rate limits the scale-up",
        [(0, seen(40.0, current=2))],
        4,
        "rate: max_scale_up_rate 2 × 2 allows 4 (panic: 6 s concurrency 40.0 / (10 × 0.7) → 6 ≥ 2 × 2 instance(s) → 6)",
        mode=Mode.PANIC,
        spec={"max_scale_up_rate": 2.0, "max": 100},
    ),
    Case(
        "rate limits the scale-down",
        [(0, seen(1.0, current=8))],
        4,
        "rate: max_scale_down_rate 2 keeps 4 of 8 (60 s concurrency 1.0 / (10 × 0.7) → 1)",
        spec={"scale_down_delay_s": 0},
    ),
    Case(
        "grace keeps one",
        [(0, seen(1.0, current=1)), (70, seen(0.0, current=1, interval_s=70))],
        1,
        "grace: idle 70 s < scale_to_zero_grace 120 s keeps 1",
        spec={"scale_to_zero_grace_s": 120},
    ),
    Case(
        "zero after the grace",
        [(0, seen(1.0, current=1)), (61, seen(0.0, current=1, interval_s=61))],
        0,
        "zero: idle 61 s ≥ scale_to_zero_grace 60 s",
        metric=Metric.NONE,
    ),
    Case("idle", [(0, seen(0.0, current=0))], 0, "idle: no traffic, no instances", metric=Metric.NONE),
    Case(
        "min",
        [(0, seen(1.0, current=2))],
        2,
        "min: 2 reserved (60 s concurrency 1.0 / (10 × 0.7) → 1)",
        spec={"min": 2},
    ),
    Case(
        "schedule",
        [(MAY_4_0930, seen(1.0, current=1))],
        3,
        "schedule: min 3 while a scheduled window is open",
        spec={"schedules": (ScalingSchedule("0 9 * * *", "UTC", 3600.0, 3),)},
    ),
    Case(
        "max",
        [(0, seen(25.0, current=3))],
        2,
        "max: capped at max 2 (60 s concurrency 25.0 / (10 × 0.7) → 4)",
        spec={"max": 2},
    ),
    Case(
        "activation scale",
        [(0, seen(5.0, current=1))],
        3,
        "activation: activation_scale 3 (60 s concurrency 5.0 / (10 × 0.7) → 1)",
        spec={"activation_scale": 3},
    ),
    Case(
        "activate from zero on a poke",
        [(0, Observation(0.0, 0, 1, 0, 0, poked=True, interval_s=0.0))],
        1,
        "activate: 1 request(s) waiting, 0 instances → 1 (0 in flight + 1 queued / 10 → 1)",
        metric=Metric.QUEUE,
    ),
    Case(
        "initial scale on a deploy",
        [(0, seen(0.0, current=0))],
        2,
        "initial: initial_scale 2 on a first deploy",
        spec={"initial_scale": 2},
        state=ScalerState(),
    ),
    Case(
        "restart keeps what it finds",
        [(0, seen(0.0, current=4))],
        4,
        "found: keeps the 4 running instance(s) until metrics are fresh",
        state=ScalerState(),
    ),
    Case(
        "restart keeps them for a panic window of fresh metrics",
        [(0, seen(0.0, current=4)), (3, seen(0.0, current=4, interval_s=3))],
        4,
        "found: 3 s of metrics < 6 s keeps 4 (rate: max_scale_down_rate 2 keeps 2 of 4",
        spec={"scale_down_delay_s": 0},
        state=ScalerState(),
    ),
    Case(
        "trend",
        [(second + 1, seen(float(second), in_flight=0, completed=1, current=1)) for second in range(6)],
        2,
        "up: trend: concurrency rising to 9.5 in 4.00 s / (10 × 0.7) → 2",
        metric=Metric.TREND,
        spec={"start_latency_s": 3.0, "prediction": True},
    ),
    Case(
        "queue",
        [(0, seen(1.0, in_flight=3, queued=12, current=1))],
        2,
        "up: 3 in flight + 12 queued / 10 → 2",
        metric=Metric.QUEUE,
    ),
    Case(
        "qps",
        [(0, seen(1.0, completed=30, current=5))],
        9,
        "up: 60 s qps 30.0/s / (5.0/s × 0.7) → 9",
        metric=Metric.QPS,
        spec={"target_qps": 5.0},
    ),
    Case(
        "cpu",
        [(0, seen(1.0, current=4, cpu=2.0))],
        6,
        "up: 60 s cpu 2.00 cores / (0.50 cores × 0.7) → 6",
        metric=Metric.CPU,
        spec={"target_cpu": 0.5},
    ),
    Case(
        "memory",
        [(0, seen(1.0, current=4, memory=1024.0 * MiB))],
        6,
        "up: 60 s memory 1024Mi / (256Mi × 0.7) → 6",
        metric=Metric.MEMORY,
        spec={"target_memory": 256.0 * MiB},
    ),
    Case(
        "cpu is ignored when the backend does not report it",
        [(0, seen(5.0, current=1))],
        1,
        "steady: 60 s concurrency 5.0",
        metric=Metric.CONCURRENCY,
        spec={"target_cpu": 0.5},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_reason(case: Case) -> None:
    spec = ScalingSpec(**{"initial_scale": 0, **case.spec})  # type: ignore[arg-type]
    decision = run(spec, case.steps, case.state)[-1]
    assert decision.reason.startswith(case.reason), decision.reason
    assert decision.desired == case.desired
    assert decision.mode is case.mode
    if case.metric is not None:
        assert decision.metric is case.metric


def test_scale_down_waits_for_the_delay_window() -> None:
    spec = ScalingSpec(initial_scale=0, max_scale_down_rate=1000, scale_down_delay_s=30)
    busy, calm = seen(30.0, current=5), seen(6.0, current=5, interval_s=10)
    # 30 over 5 instances is no panic (capacity 35); the stable window then falls as calm seconds come in.
    decisions = run(spec, [(0, busy), (10, calm), (20, calm), (29, calm), (31, calm), (61, calm)])
    assert [decision.desired for decision in decisions] == [5, 5, 5, 5, 2, 1]


def test_a_long_request_still_running_keeps_its_instance() -> None:
    spec = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=10, initial_scale=0)
    running = Observation(1.0, 1, 0, 0, 1, interval_s=10)
    assert [decision.desired for decision in run(spec, [(float(t), running) for t in range(0, 100, 10)])] == [1] * 10


def test_prediction_off_leaves_a_ramp_to_the_windows() -> None:
    ramp = [(second + 1, seen(float(second), in_flight=0, completed=1, current=1)) for second in range(6)]
    decision = run(ScalingSpec(initial_scale=0, start_latency_s=3.0, prediction=False), ramp)[-1]
    assert decision.metric is Metric.CONCURRENCY
    assert decision.desired == 1


def test_a_schedule_above_max_is_capped_at_max() -> None:
    schedule = ScalingSchedule("0 9 * * *", "UTC", 3600.0, 50)
    spec = ScalingSpec(initial_scale=0, max=5, schedules=(schedule,))
    decision = run(spec, [(MAY_4_0930, seen(0.0, current=0))])[-1]
    assert decision.desired == 5


def test_a_small_residue_in_the_window_does_not_read_as_zero() -> None:
    spec = ScalingSpec(initial_scale=0, scale_down_delay_s=0)
    steps = [(0, seen(1.0, current=1)), (59, seen(0.0, current=1, interval_s=59))]
    decision = run(spec, steps)[-1]
    assert decision.desired == 1
    assert "concurrency 0.017 " in decision.reason


@pytest.mark.parametrize(
    ("gaps", "keep_s"),
    [((), 60.0), ((40.0, 70.0, 55.0), 140.0), ((10.0,), 60.0), ((40.0, 400.0), 60.0), ((150.0,), 300.0)],
)
def test_the_keep_alive_covers_short_recent_gaps_only(gaps: tuple[float, ...], keep_s: float) -> None:
    assert keep_alive_s(ScalingSpec(scale_to_zero_grace_s=60), gaps) == keep_s


def test_a_function_called_every_minute_stays_warm_a_rare_one_does_not() -> None:
    spec = ScalingSpec(initial_scale=0, scale_to_zero_grace_s=30)
    calls = [(float(t), seen(1.0, current=1)) for t in (0, 50, 100, 150)]
    after = [(150.0 + t, seen(0.0, in_flight=0, current=1, interval_s=1.0)) for t in range(1, 100)]
    decisions = run(spec, [*calls, *after])
    assert decisions[-1].desired == 1, "gaps of 50 s keep an instance 100 s"
    assert "keep-alive 100 s" in decisions[-1].reason
    rare = run(spec, [(0.0, seen(1.0, current=1)), (500.0, seen(1.0, current=1)), (531.0, seen(0.0, current=1))])
    assert rare[-1].desired == 0, "a 500 s gap is longer than five graces: the grace alone"


def test_a_deploys_initial_scale_is_kept_for_the_grace() -> None:
    spec = ScalingSpec(initial_scale=1, scale_to_zero_grace_s=60)
    decisions = run(
        spec, [(0, seen(0.0, current=0)), (30, seen(0.0, current=1)), (61, seen(0.0, current=1))], ScalerState()
    )
    assert [decision.desired for decision in decisions] == [1, 1, 0]


def test_a_burst_that_has_ended_does_not_panic_an_idle_version() -> None:
    # Found live: 36 async tasks drained in 2 s; the grace (2 s) then halved 6 instances to 3 and to 1, and the
    # 6 s window, still holding the burst, read 1.8 in flight as 3 instances >= 2 x 1: it started 2 for nothing.
    spec = ScalingSpec(target_concurrency=1, max=8, scale_to_zero_grace_s=2, initial_scale=0)
    burst = [(float(t), seen(5.4, current=6)) for t in range(2)]
    idle = [(float(t), seen(0.0, current=current)) for t, current in ((2, 6), (3, 6), (4, 3), (5, 1), (6, 1))]
    decisions = run(spec, burst + idle)
    assert [decision.mode for decision in decisions[2:]] == [Mode.STABLE] * 5
    assert decisions[-2].desired <= 1, decisions[-2].reason
    assert decisions[-1].desired == 0, decisions[-1].reason
