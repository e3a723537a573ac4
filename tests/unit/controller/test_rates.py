"""Cumulative CPU counters into mean cores per version (`controller/backends/rates.py`), on a virtual clock."""

from __future__ import annotations

import math

from hypothesis import given, strategies as st

from controller.backends.rates import Baseline, Sample, advance
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import VersionKey

A = VersionKey(FunctionName("a"), VersionId("v1"))
B = VersionKey(FunctionName("b"), VersionId("v1"))

rates = st.floats(min_value=0.0, max_value=8.0)
steps = st.floats(min_value=0.05, max_value=10.0)


@given(
    st.lists(st.tuples(rates, st.floats(0.0, 1e6), st.sampled_from([A, B])), min_size=1, max_size=6),
    st.lists(steps, min_size=2, max_size=8),
)
def test_steady_counters_read_as_the_sum_of_their_rates(
    instances: list[tuple[float, float, VersionKey]], dts: list[float]
) -> None:
    baselines: dict[str, Baseline] = {}
    now, elapsed = 1000.0, 0.0
    for tick, dt in enumerate(dts):
        samples = {
            f"i{n}": Sample(key, 100 + n, start + rate * elapsed, 50.0 * (n + 1))
            for n, (rate, start, key) in enumerate(instances)
        }
        baselines, usage = advance(baselines, samples, now)
        for key in {key for _, _, key in instances}:
            mine = [(n, rate) for n, (rate, _, k) in enumerate(instances) if k == key]
            assert usage[key].instances == len(mine)
            assert usage[key].memory_bytes == sum(50.0 * (n + 1) for n, _ in mine)
            if tick == 0:
                assert usage[key].cores is None, "a first sample is a baseline, not a rate"
            else:
                assert math.isclose(usage[key].cores or 0.0, sum(r for _, r in mine), rel_tol=1e-6, abs_tol=1e-6)
        now += dt
        elapsed += dt


@given(st.lists(st.tuples(steps, rates, st.booleans()), min_size=2, max_size=30))
def test_missing_samples_lose_no_cpu(ticks: list[tuple[float, float, bool]]) -> None:
    """A tick whose read failed is covered by the next rate: the integral of the reported cores is the CPU used."""
    baselines: dict[str, Baseline] = {}
    now, counter = 0.0, 5.0
    baselines, _ = advance(baselines, {"i": Sample(A, 1, counter, None)}, now)
    first, last_read, integral = counter, now, 0.0
    for dt, rate, missing in ticks:
        now += dt
        counter += rate * dt
        baselines, usage = advance(baselines, {"i": Sample(A, 1, None if missing else counter, None)}, now)
        if missing:
            assert usage[A].cores is None
            continue
        cores = usage[A].cores
        assert cores is not None
        assert cores >= 0
        integral += cores * (now - last_read)
        last_read = now
    if last_read == now:  # (a missing tail has not been reported yet: nothing to compare)
        assert math.isclose(integral, counter - first, rel_tol=1e-6, abs_tol=1e-6)


change = st.one_of(
    st.tuples(st.just("run"), rates),
    st.tuples(st.just("reset"), st.floats(0.0, 1.0)),
    st.tuples(st.just("restart"), st.floats(0.0, 1e9)),
    st.tuples(st.just("missing"), st.just(0.0)),
)


@given(st.lists(st.tuples(steps, change), min_size=1, max_size=40))
def test_resets_and_restarts_are_baselines_never_negative_or_inflated_rates(
    ticks: list[tuple[float, tuple[str, float]]],
) -> None:
    """A counter that goes down, or a new process behind the instance, restarts the rating; no rate is ever
    below zero or above the most cores the instance used (8), however large a new process's counter is."""
    baselines: dict[str, Baseline] = {}
    now, counter, incarnation = 0.0, 0.0, 1
    baselines, _ = advance(baselines, {"i": Sample(A, incarnation, counter, 1.0)}, now)
    read_last_tick = True
    for dt, (what, value) in ticks:
        now += dt
        lowered = False
        if what == "run":
            counter += value * dt
        elif what == "reset":
            lowered = counter * value < counter
            counter *= value
        elif what == "restart":
            incarnation += 1
            counter = value
        cpu = None if what == "missing" else counter
        baselines, usage = advance(baselines, {"i": Sample(A, incarnation, cpu, 1.0)}, now)
        cores = usage[A].cores
        assert cores is None or 0.0 <= cores <= 8.0 + 1e-6
        if what == "restart" or lowered:
            assert cores is None, "a new counter is a baseline"
        if what == "run" and read_last_tick:
            assert cores is not None
            assert math.isclose(cores, value, rel_tol=1e-6, abs_tol=1e-6)
        assert usage[A].memory_bytes == 1.0
        read_last_tick = what != "missing"


def test_a_restart_rates_from_its_new_baseline() -> None:
    baselines, _ = advance({}, {"i": Sample(A, 1, 100.0, None)}, 0.0)
    baselines, usage = advance(baselines, {"i": Sample(A, 2, 0.3, None)}, 1.0)
    assert usage[A].cores is None, "the new process's counter is its start-up, not load"
    _, usage = advance(baselines, {"i": Sample(A, 2, 0.8, None)}, 2.0)
    assert math.isclose(usage[A].cores or -1.0, 0.5)


def test_a_counter_that_goes_down_is_a_baseline() -> None:
    baselines, _ = advance({}, {"i": Sample(A, 1, 10.0, None)}, 0.0)
    baselines, usage = advance(baselines, {"i": Sample(A, 1, 2.0, None)}, 1.0)
    assert usage[A].cores is None
    _, usage = advance(baselines, {"i": Sample(A, 1, 3.0, None)}, 3.0)
    assert usage[A].cores == 0.5


def test_gone_instances_are_forgotten_and_a_version_with_some_rates_sums_them() -> None:
    baselines, _ = advance({}, {"i": Sample(A, 1, 1.0, 10.0), "j": Sample(A, 2, 1.0, 20.0)}, 0.0)
    baselines, usage = advance(baselines, {"i": Sample(A, 1, 2.0, 10.0), "k": Sample(A, 3, 7.0, 5.0)}, 1.0)
    assert set(baselines) == {"i", "k"}
    assert usage[A].cores == 1.0, "k is new (a baseline), j is gone: only i is rated"
    assert usage[A].memory_bytes == 15.0
    assert usage[A].instances == 2


def test_no_time_passing_keeps_the_old_baseline() -> None:
    baselines, _ = advance({}, {"i": Sample(A, 1, 1.0, None)}, 5.0)
    baselines, usage = advance(baselines, {"i": Sample(A, 1, 1.5, None)}, 5.0)
    assert usage[A].cores is None
    _, usage = advance(baselines, {"i": Sample(A, 1, 2.0, None)}, 6.0)
    assert usage[A].cores == 1.0


def test_unknown_memory_is_none_not_zero() -> None:
    _, usage = advance({}, {"i": Sample(A, 1, None, None)}, 0.0)
    assert usage[A].memory_bytes is None
    assert usage[A].cores is None
