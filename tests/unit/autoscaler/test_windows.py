from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from autoscaler.windows import Window, average, covered_s, projected, record

KEEP = 62.0


def filled(values: list[float], *, start: float = 100.0) -> Window:
    window = Window()
    for offset, value in enumerate(values):
        window = record(window, value, now=start + offset + 1, interval_s=1.0, keep_s=KEEP)
    return window


def test_an_empty_window_has_no_average() -> None:
    assert average(Window(), now=100.0, length_s=60) is None
    assert covered_s(Window(), now=100.0, length_s=60) == 0


def test_a_young_window_averages_over_what_it_has() -> None:
    window = filled([4.0, 8.0])
    assert average(window, now=102.0, length_s=60) == pytest.approx(6.0)
    assert covered_s(window, now=102.0, length_s=60) == pytest.approx(2.0)


def test_observed_zeros_pull_the_average_down() -> None:
    window = filled([6.0, 0.0, 0.0])
    assert average(window, now=103.0, length_s=60) == pytest.approx(2.0)


def test_gaps_are_unknown_not_zero() -> None:
    window = record(Window(), 6.0, now=101.0, interval_s=1.0, keep_s=KEEP)
    window = record(window, 2.0, now=110.0, interval_s=1.0, keep_s=KEEP)  # 101..109 nobody recorded
    assert average(window, now=110.0, length_s=60) == pytest.approx(4.0)
    assert covered_s(window, now=110.0, length_s=60) == pytest.approx(2.0)


def test_a_long_interval_spreads_its_mean_over_every_second_it_covers() -> None:
    window = record(Window(), 3.0, now=102.5, interval_s=2.5, keep_s=KEEP)
    assert [second for second, _, _ in window.buckets] == [100, 101, 102]
    assert [covered for _, _, covered in window.buckets] == pytest.approx([1.0, 1.0, 0.5])
    assert average(window, now=102.5, length_s=6) == pytest.approx(3.0)


def test_a_point_observation_records_nothing() -> None:
    assert record(Window(), 9.0, now=100.0, interval_s=0.0, keep_s=KEEP) == Window()


def test_the_panic_window_sees_only_the_last_seconds() -> None:
    window = filled([0.0] * 54 + [20.0] * 6)
    assert average(window, now=160.0, length_s=6) == pytest.approx(20.0)
    assert average(window, now=160.0, length_s=60) == pytest.approx(2.0)


def test_buckets_older_than_keep_are_dropped() -> None:
    window = filled([1.0] * 200)
    assert len(window.buckets) <= KEEP + 2
    assert window.buckets[-1][0] == 299


def test_a_clock_step_back_drops_the_future() -> None:
    window = filled([5.0] * 10)
    window = record(window, 1.0, now=105.0, interval_s=1.0, keep_s=KEEP)
    assert max(second for second, _, _ in window.buckets) <= 105


def test_a_steady_ramp_projects_ahead() -> None:
    window = filled([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # one more per second, bucket middles at 100.5..105.5
    assert projected(window, now=106.0, length_s=6, ahead_s=2.0) == pytest.approx(7.5)


def test_no_trend_from_too_few_points() -> None:
    assert projected(filled([1.0, 5.0]), now=102.0, length_s=6, ahead_s=1.0) is None


def test_a_flat_window_projects_its_level() -> None:
    assert projected(filled([3.0] * 6), now=106.0, length_s=6, ahead_s=5.0) == pytest.approx(3.0)


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=80))
def test_the_average_lies_between_the_extremes(values: list[float]) -> None:
    window = filled(values)
    now = 100.0 + len(values)
    mean = average(window, now=now, length_s=60)
    recent = values[-61:]
    assert mean is not None
    assert min(recent) - 1e-6 <= mean <= max(recent) + 1e-6


def test_a_slope_that_noise_explains_is_no_trend() -> None:
    noisy = filled([5.0, 3.0, 6.0, 2.0, 7.0, 4.0])
    assert projected(noisy, now=106.0, length_s=6, ahead_s=2.0, min_t=2.0) is None
    assert projected(noisy, now=106.0, length_s=6, ahead_s=2.0) is not None


def test_a_clear_rise_is_a_trend_despite_some_noise() -> None:
    rising = filled([0.0, 2.2, 3.8, 6.1, 8.0, 9.9])
    ahead = projected(rising, now=106.0, length_s=6, ahead_s=1.0, min_t=2.0)
    assert ahead is not None
    assert ahead > 10.0
