from __future__ import annotations

from hypothesis import given, strategies as st

from gateway.asyncq.aimd import AimdConfig, AimdState, observe, pace, start, wait_s

CONFIG = AimdConfig(initial_rate=10.0, min_rate=1.0, max_rate=100.0, increase=5.0, window_s=1.0)


def _window(state: AimdState, *, at: float, succeeded: int, throttled: int, backlog: int) -> AimdState:
    """One window's worth of results, reported at its end."""
    return observe(CONFIG, state, succeeded=succeeded, throttled=throttled, backlog=backlog, now=at)


def test_the_rate_grows_additively_while_the_backlog_grows_and_work_succeeds() -> None:
    state = observe(CONFIG, start(CONFIG), succeeded=0, throttled=0, backlog=100, now=0.0)
    state = _window(state, at=1.0, succeeded=10, throttled=0, backlog=150)
    assert state.rate == 15.0
    assert state.reason.startswith("increase: backlog 100 → 150")
    state = _window(state, at=2.0, succeeded=15, throttled=0, backlog=150)
    assert state.rate == 20.0


def test_the_rate_holds_while_the_backlog_drains() -> None:
    state = observe(CONFIG, start(CONFIG), succeeded=0, throttled=0, backlog=100, now=0.0)
    state = _window(state, at=1.0, succeeded=10, throttled=0, backlog=90)
    assert state.rate == 10.0
    assert state.reason.startswith("hold")


def test_the_rate_halves_only_past_both_the_error_rate_and_the_error_count() -> None:
    state = observe(CONFIG, start(CONFIG), succeeded=0, throttled=0, backlog=100, now=0.0)
    few = _window(state, at=1.0, succeeded=0, throttled=4, backlog=100)  # 100% but 4 < 5
    assert few.rate == 10.0
    diluted = _window(few, at=2.0, succeeded=1000, throttled=20, backlog=100)  # 20 ≥ 5 but 2% < 10%
    assert diluted.rate == 15.0
    both = _window(diluted, at=3.0, succeeded=10, throttled=6, backlog=100)
    assert both.rate == 7.5
    assert both.reason.startswith("decrease: 6 throttled of 16")


def test_a_window_closes_only_when_its_time_is_up() -> None:
    state = observe(CONFIG, start(CONFIG), succeeded=0, throttled=0, backlog=10, now=0.0)
    state = observe(CONFIG, state, succeeded=3, throttled=0, backlog=20, now=0.5)
    assert (state.rate, state.succeeded) == (10.0, 3)


def test_pace_lets_through_a_burst_then_the_rate_and_says_how_long_to_wait() -> None:
    state = start(CONFIG)
    allowed = 0
    now = 0.0
    while now < 50.0:
        ok, state = pace(CONFIG, state, now=now)
        if ok:
            allowed += 1
        else:
            assert wait_s(state) > 0
            now += wait_s(state)
    burst = CONFIG.initial_rate * CONFIG.window_s
    assert abs(allowed - (burst + CONFIG.initial_rate * now)) <= 2


@given(
    windows=st.lists(
        st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(0, 10_000)), min_size=1, max_size=50
    )
)
def test_the_rate_stays_within_its_bounds(windows: list[tuple[int, int, int]]) -> None:
    state = start(CONFIG)
    for index, (succeeded, throttled, backlog) in enumerate(windows):
        state = observe(CONFIG, state, succeeded=succeeded, throttled=throttled, backlog=backlog, now=float(index))
        assert CONFIG.min_rate <= state.rate <= CONFIG.max_rate
