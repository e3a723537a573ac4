"""How fast to push a function's async tasks: additive increase, multiplicative decrease (AIMD). Pure.

The seed's dispatch rule (Alibaba Function Compute): the dispatch rate grows *additively* while the backlog grows
(or does not shrink) and work succeeds, and shrinks *multiplicatively* when throttling errors pass **both** an
error-rate and an error-count threshold within a window, so a handful of 429s in a large window, or a high rate
of them over two requests, does not halve the rate. Windows are closed by `now`; `pace` turns the rate into
permission to dispatch (a token bucket with one window's worth of burst).

    state = observe(config, state, succeeded=3, throttled=0, backlog=120, now=now)
    allowed, state = pace(config, state, now=now)
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AimdConfig:
    initial_rate: float = 50.0
    """Dispatches per second to start with."""
    min_rate: float = 1.0
    max_rate: float = 10_000.0
    increase: float = 10.0
    """Added to the rate after a window in which the backlog did not shrink and work succeeded."""
    decrease_factor: float = 0.5
    error_rate_threshold: float = 0.1
    error_count_threshold: int = 5
    window_s: float = 1.0


@dataclass(frozen=True, slots=True)
class AimdState:
    rate: float
    window_start: float | None = None
    succeeded: int = 0
    throttled: int = 0
    backlog_at_start: int = 0
    tokens: float = 1.0
    refilled_at: float | None = None
    reason: str = "initial"


def start(config: AimdConfig) -> AimdState:
    """A fresh state with a full bucket: a backlog starts with one window's worth of dispatches at once."""
    return AimdState(rate=config.initial_rate, tokens=max(1.0, config.initial_rate * config.window_s))


def observe(
    config: AimdConfig, state: AimdState, *, succeeded: int, throttled: int, backlog: int, now: float
) -> AimdState:
    """Count results and close the window when it is over, adjusting the rate. `backlog` is the queue depth now."""
    if state.window_start is None:
        return replace(state, window_start=now, succeeded=succeeded, throttled=throttled, backlog_at_start=backlog)
    started = state.window_start
    state = replace(state, succeeded=state.succeeded + succeeded, throttled=state.throttled + throttled)
    if now - started < config.window_s:
        return state
    rate, reason = _adjust(config, state, backlog)
    return replace(
        state, rate=rate, reason=reason, window_start=now, succeeded=0, throttled=0, backlog_at_start=backlog
    )


def _adjust(config: AimdConfig, state: AimdState, backlog: int) -> tuple[float, str]:
    total = state.succeeded + state.throttled
    error_rate = state.throttled / total if total else 0.0
    if state.throttled >= config.error_count_threshold and error_rate >= config.error_rate_threshold:
        rate = max(config.min_rate, state.rate * config.decrease_factor)
        return rate, (
            f"decrease: {state.throttled} throttled of {total} ({error_rate:.0%} ≥ {config.error_rate_threshold:.0%},"
            f" {state.throttled} ≥ {config.error_count_threshold}) → {rate:g}/s"
        )
    if backlog > 0 and backlog >= state.backlog_at_start and state.succeeded > 0:
        rate = min(config.max_rate, state.rate + config.increase)
        return (
            rate,
            f"increase: backlog {state.backlog_at_start} → {backlog} with {state.succeeded} succeeded → {rate:g}/s",
        )
    return state.rate, f"hold: backlog {state.backlog_at_start} → {backlog}, {state.throttled} throttled of {total}"


def pace(config: AimdConfig, state: AimdState, *, now: float) -> tuple[bool, AimdState]:
    """May one more task be dispatched at `now`? Refills tokens at `rate`, holding at most one window's worth."""
    burst = max(1.0, state.rate * config.window_s)
    if state.refilled_at is None:
        tokens = state.tokens
    else:
        tokens = min(burst, state.tokens + (now - state.refilled_at) * state.rate)
    if tokens >= 1.0 - 1e-9:  # float refills land a hair short of a whole token
        return True, replace(state, tokens=max(0.0, tokens - 1.0), refilled_at=now)
    return False, replace(state, tokens=tokens, refilled_at=now)


def wait_s(state: AimdState) -> float:
    """How long until `pace` will allow the next dispatch (0 when it would now)."""
    missing = 1.0 - state.tokens
    return max(0.0, missing / state.rate) if state.rate > 0 else float("inf")
