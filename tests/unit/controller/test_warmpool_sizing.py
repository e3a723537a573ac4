"""The pool's idle target: growth while claims drain it, back to min after a quiet period, TTL recycling."""

from __future__ import annotations

from hypothesis import given, strategies as st

from controller.poolsizing import Pressure, Sizing, after_claim, initial, settle, to_fork, to_release

SIZING = Sizing(min_idle=2, max_idle=6, idle_ttl_s=600.0, quiet_period_s=60.0)


def test_a_pool_starts_at_its_minimum() -> None:
    assert initial(SIZING) == Pressure(2)
    assert to_fork(initial(SIZING), idle=0, preparing=0) == 2


def test_a_claim_that_leaves_idle_instances_changes_nothing() -> None:
    assert after_claim(SIZING, Pressure(2), idle_left=1, now=5.0) == Pressure(2)


def test_claims_that_drain_the_pool_grow_the_target_up_to_max() -> None:
    pressure = initial(SIZING)
    for second in range(10):
        pressure = after_claim(SIZING, pressure, idle_left=0, now=float(second))
    assert pressure == Pressure(6, last_drained=9.0)


def test_a_burst_of_five_claims_raises_the_target_and_the_refills_follow() -> None:
    pressure = after_claim(SIZING, initial(SIZING), idle_left=1, now=0.0)  # one of two taken
    for _ in range(4):  # the rest drain it, refills not ready yet
        pressure = after_claim(SIZING, pressure, idle_left=0, now=0.02)
    assert pressure.target == 6
    assert to_fork(pressure, idle=0, preparing=2) == 4


def test_the_target_falls_back_to_min_only_after_the_quiet_period() -> None:
    grown = Pressure(5, last_drained=100.0)
    assert settle(SIZING, grown, now=159.9) == grown
    assert settle(SIZING, grown, now=160.0) == Pressure(2)


def test_settle_applies_new_bounds_after_a_reload() -> None:
    smaller = Sizing(min_idle=1, max_idle=3, idle_ttl_s=600.0, quiet_period_s=60.0)
    assert settle(smaller, Pressure(5, last_drained=100.0), now=101.0).target == 3
    larger = Sizing(min_idle=4, max_idle=8, idle_ttl_s=600.0, quiet_period_s=60.0)
    assert settle(larger, Pressure(2), now=101.0).target == 4


def test_idle_instances_past_their_ttl_are_released_and_then_the_oldest_surplus() -> None:
    born = [0.0, 500.0, 550.0, 590.0]
    assert to_release(SIZING, Pressure(2), born, now=600.0) == [0, 1]  # 0 expired; 1 is the oldest of 3 left
    assert to_release(SIZING, Pressure(4), born, now=600.0) == [0]
    assert to_release(SIZING, Pressure(4), born, now=100.0) == []


@given(
    st.integers(0, 10),
    st.integers(0, 10),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.floats(0, 1000)), max_size=40),
)
def test_the_target_always_stays_within_min_and_max(
    low: int, extra: int, events: list[tuple[bool, int, float]]
) -> None:
    sizing = Sizing(min_idle=low, max_idle=low + extra, idle_ttl_s=30.0, quiet_period_s=10.0)
    pressure = initial(sizing)
    now = 0.0
    for is_claim, idle_left, step in events:
        now += step
        if is_claim:
            pressure = after_claim(sizing, pressure, idle_left=idle_left, now=now)
        else:
            pressure = settle(sizing, pressure, now=now)
        assert sizing.min_idle <= pressure.target <= sizing.max_idle


@given(st.lists(st.floats(0, 1000), max_size=20), st.integers(0, 10), st.floats(0, 2000))
def test_what_is_kept_is_young_and_never_more_than_the_target(born: list[float], target: int, now: float) -> None:
    born = sorted(born)
    released = to_release(SIZING, Pressure(target), born, now=now)
    kept = [at for index, at in enumerate(born) if index not in released]
    assert len(kept) <= target
    assert all(now - at < SIZING.idle_ttl_s for at in kept)
    assert released == sorted(set(released))
