"""KpaPolicy against the cases of Knative's own pkg/autoscaler/scaling/autoscaler_test.go, and its scale to zero.

Knative's test decider: target 10 (unless said), max scale-up and scale-down rates 10, panic threshold 2,
stable window 60 s (`newTestAutoscalerWithScalingMetric`).
"""

from __future__ import annotations

import pytest

from autoscaler.decision import Observation
from autoscaler.simulation.policies import KpaConfig, KpaPolicy, _Buckets


def knative(target: float = 10.0, **overrides: float) -> KpaPolicy:
    values = {"max_scale_up_rate": 10.0, "max_scale_down_rate": 10.0, "panic_threshold": 2.0, **overrides}
    return KpaPolicy(KpaConfig(target=target, **values))  # type: ignore[arg-type]


def scale(policy: KpaPolicy, stable: float, panic: float, ready: int, now: float = 0.0) -> int:
    return policy.scale(stable=stable, panic=panic, ready=ready, now=now)[0]


@pytest.mark.parametrize(
    ("stable", "panic", "ready", "want"),
    [
        pytest.param(50, 50, 1, 5, id="AutoscalerStableModeNoChange"),
        pytest.param(50, 50, 5, 5, id="AutoscalerStableModeNoChangeAlreadyScaled"),
        pytest.param(50, 100, 1, 10, id="AutoscalerPanicModeDoublePodCount"),
        pytest.param(1000, 1001, 1, 10, id="RateLimitScaleUp-first"),
        pytest.param(1000, 1001, 10, 100, id="RateLimitScaleUp-again"),
        pytest.param(1, 1, 100, 10, id="RateLimitScaleDown-first"),
        pytest.param(1, 1, 10, 1, id="RateLimitScaleDown-again"),
        pytest.param(1000, 888, 0, 10, id="UseOnePodAsMinimumIfEndpointsNotFound"),
        pytest.param(0, 0, 1, 0, id="StableModeNoTrafficScaleToZero"),
    ],
)
def test_scale_matches_knatives_table(stable: float, panic: float, ready: int, want: int) -> None:
    assert scale(knative(), stable, panic, ready) == want


def test_stable_mode_increase_and_decrease() -> None:
    policy = knative()
    assert scale(policy, 50, 10, 1) == 5
    assert scale(policy, 100, 10, 1) == 10
    decreasing = knative()
    assert scale(decreasing, 100, 100, 8) == 10
    assert scale(decreasing, 50, 50, 8) == 5


def test_panic_holds_the_count_until_a_stable_window_passes() -> None:
    # TestAutoscalerPanicThenUnPanicScaleDown
    policy = knative()
    assert scale(policy, 100, 100, 1, now=0.0) == 10
    assert scale(policy, 100, 1000, 10, now=1.0) == 100
    assert scale(policy, 1, 1, 10, now=31.0) == 100
    assert scale(policy, 1, 1, 10, now=62.0) == 1
    assert policy.state.panic_since is None


def test_panic_is_extended_while_over_the_threshold() -> None:
    # TestAutoscalerExtendPanicWindow
    policy = knative(target=1.0)
    assert scale(policy, 11, 25, 10, now=0.0) == 25
    assert scale(policy, 30, 80, 40, now=30.0) == 80
    assert policy.state.panic_since == 30.0


def test_panic_ends_after_a_slow_increase() -> None:
    # TestAutoscalerUnpanicAfterSlowIncrease
    policy = knative(target=1.0)
    assert scale(policy, 11, 25, 10, now=0.0) == 25
    assert scale(policy, 30, 41, 40, now=30.0) == 41
    assert policy.state.panic_since == 0.0
    assert scale(policy, 50, 56, 55, now=62.0) == 50
    assert policy.state.panic_since is None


@pytest.mark.parametrize(
    ("stable", "panic", "want"),
    [
        pytest.param(50, 30, 50, id="AutoscalerPanicStableLargerThanPanic"),
        pytest.param(20, 30, 30, id="AutoscalerPanicStableLessThanPanic"),
    ],
)
def test_in_panic_the_larger_of_stable_and_panic_wins(stable: float, panic: float, want: int) -> None:
    policy = knative(target=1.0)
    policy.state.panic_since, policy.state.max_panic_pods = -5.0, 5
    assert scale(policy, stable, panic, 5) == want


def test_scale_down_delay_keeps_the_highest_count_of_the_delay_window() -> None:
    # TestAutoscalerScaleDownDelay ("simple"), panic threshold 100 so that nothing panics
    policy = knative(panic_threshold=100.0, scale_down_delay_s=300.0)
    assert scale(policy, 40, 40, 0, now=2.0) == 4
    assert scale(policy, 0, 0, 4, now=300.0) == 4
    assert scale(policy, 0, 0, 4, now=302.0) == 0


def test_window_average_covers_only_the_time_since_the_first_write() -> None:
    window = _Buckets(60)
    for second in range(6):
        window.record(second, 6.0)
    assert window.average(5) == 6.0  # six seconds of 6, not 36/60


def test_window_average_stops_at_the_last_write_when_data_stops() -> None:
    window = _Buckets(60)
    for second in range(100):
        window.record(second, 1.0 if second < 80 else 3.0)
    # Last write at 99; at 109 the average is over the 50 seconds 50..99: 30 x 1 + 20 x 3.
    assert window.average(109) == pytest.approx((30 + 60) / 50)
    assert window.average(160) is None  # nothing for a whole window: ErrNoData


def tick(policy: KpaPolicy, now: float, *, concurrency: float, current: int) -> int:
    seen = Observation(
        concurrency=concurrency, in_flight=0, queued=0, completed=0, current=current, ready=current, interval_s=2.0
    )
    return policy.decide(seen, now).desired


def test_scale_to_zero_waits_for_a_stable_window_of_zeros_then_the_grace() -> None:
    policy = KpaPolicy(KpaConfig(target=7.0))
    assert tick(policy, 2.0, concurrency=7.0, current=0) == 1  # initial-scale 1
    assert tick(policy, 4.0, concurrency=7.0, current=1) == 1
    desired = {now: tick(policy, now, concurrency=0.0, current=1) for now in range(6, 200, 2)}
    first_zero = min(now for now, count in desired.items() if count == 0)
    # Zeros from 6 s: the 60 s average reaches 0 at ~64 s, the revision is marked inactive, 30 s of grace follow.
    assert 90 <= first_zero <= 100
    assert all(count == 1 for now, count in desired.items() if now < first_zero)


def test_a_poke_at_zero_scales_up_at_once() -> None:
    policy = KpaPolicy(KpaConfig(target=7.0, initial_scale=0))
    seen = Observation(concurrency=3.0, in_flight=0, queued=3, completed=0, current=0, ready=0, interval_s=0.0)
    verdict = policy.poke(seen, 0.3)
    assert verdict is not None
    assert verdict.desired == 1
    assert policy.poke(Observation(concurrency=0.0, in_flight=1, queued=1, completed=0, current=1), 0.4) is None
