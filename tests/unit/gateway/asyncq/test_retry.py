from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.asyncq.retry import (
    Failure,
    FailureClass,
    Next,
    RetryPolicy,
    backoff_s,
    classify_failure,
    is_expired,
    next_step,
)

POLICY = RetryPolicy(max_retries=2, max_event_age_s=3600.0, base_delay_s=1.0, max_delay_s=60.0)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Failure(500, "NonRetryable"), FailureClass.NON_RETRYABLE),
        (Failure(400), FailureClass.NON_RETRYABLE),
        (Failure(404), FailureClass.NON_RETRYABLE),
        (Failure(422), FailureClass.NON_RETRYABLE),
        (Failure(408), FailureClass.RETRYABLE),
        (Failure(429), FailureClass.THROTTLED),
        (Failure(500, "Throttled", retry_after_s=5), FailureClass.THROTTLED),
        (Failure(None, "no_capacity"), FailureClass.THROTTLED),
        (Failure(500, "ValueError"), FailureClass.RETRYABLE),
        (Failure(502), FailureClass.RETRYABLE),
        (Failure(504, "timeout"), FailureClass.RETRYABLE),
        (Failure(None, "crash"), FailureClass.RETRYABLE),
        (Failure(None), FailureClass.RETRYABLE),
    ],
)
def test_failures_are_classified_as_lambda_users_expect(failure: Failure, expected: FailureClass) -> None:
    assert classify_failure(failure) is expected


def test_a_non_retryable_failure_goes_straight_to_the_dead_letter_store() -> None:
    verdict = next_step(POLICY, Failure(400), attempts=1, throttles=0, enqueued_at=0.0, now=1.0, jitter=0.5)
    assert verdict.next is Next.DEAD_LETTER
    assert verdict.reason == "non-retryable: HTTP 400"


def test_retryable_failures_retry_max_retries_times_then_dead_letter() -> None:
    failure = Failure(500, "ValueError")
    first = next_step(POLICY, failure, attempts=1, throttles=0, enqueued_at=0.0, now=10.0, jitter=0.99)
    second = next_step(POLICY, failure, attempts=2, throttles=0, enqueued_at=0.0, now=20.0, jitter=0.99)
    third = next_step(POLICY, failure, attempts=3, throttles=0, enqueued_at=0.0, now=30.0, jitter=0.99)
    assert (first.next, second.next, third.next) == (Next.RETRY, Next.RETRY, Next.DEAD_LETTER)
    assert first.at is not None
    assert second.at is not None
    assert second.at - 20.0 > first.at - 10.0, "the backoff grows"
    assert third.reason == "retries exhausted: 3 attempts (max_retries 2); last: ValueError (HTTP 500)"


def test_throttling_does_not_spend_an_attempt_and_honours_retry_after() -> None:
    verdict = next_step(
        POLICY, Failure(429, retry_after_s=30.0), attempts=5, throttles=1, enqueued_at=0.0, now=1.0, jitter=0.0
    )
    assert verdict.next is Next.RETRY
    assert not verdict.spends_attempt
    assert verdict.at == pytest.approx(31.0)


def test_a_retry_that_would_pass_the_maximum_event_age_expires_instead() -> None:
    verdict = next_step(POLICY, Failure(429), attempts=0, throttles=40, enqueued_at=0.0, now=3590.0, jitter=0.99)
    assert verdict.next is Next.EXPIRE
    assert verdict.reason.startswith("max_event_age 3600s reached (throttled")
    assert is_expired(POLICY, enqueued_at=0.0, now=3600.5)
    assert not is_expired(POLICY, enqueued_at=0.0, now=3600.0)


@given(
    step=st.integers(0, 200),
    jitter=st.floats(0.0, 1.0, exclude_max=True),
    base=st.floats(0.01, 10.0),
    cap=st.floats(10.0, 1000.0),
)
def test_backoff_stays_between_half_the_base_and_the_cap(step: int, jitter: float, base: float, cap: float) -> None:
    wait = backoff_s(base_s=base, cap_s=cap, step=step, jitter=jitter)
    assert base / 2 <= wait <= cap


@given(
    status=st.one_of(st.none(), st.integers(100, 599)),
    error=st.sampled_from([None, "NonRetryable", "Throttled", "ValueError", "timeout", "crash", "no_capacity"]),
    attempts=st.integers(1, 10),
    throttles=st.integers(0, 100),
    age=st.floats(0.0, 10_000.0),
    jitter=st.floats(0.0, 1.0, exclude_max=True),
)
def test_every_verdict_is_final_or_a_retry_in_the_future_within_the_event_age(
    status: int | None, error: str | None, attempts: int, throttles: int, age: float, jitter: float
) -> None:
    now = 50_000.0
    failure = Failure(status, error)
    verdict = next_step(
        POLICY, failure, attempts=attempts, throttles=throttles, enqueued_at=now - age, now=now, jitter=jitter
    )
    again = next_step(
        POLICY, failure, attempts=attempts, throttles=throttles, enqueued_at=now - age, now=now, jitter=jitter
    )
    assert verdict == again
    if verdict.next is Next.RETRY:
        assert verdict.at is not None
        assert verdict.at > now
        assert verdict.at - (now - age) <= POLICY.max_event_age_s
        assert verdict.spends_attempt is (verdict.failure_class is FailureClass.RETRYABLE)
    else:
        assert verdict.at is None
    if verdict.failure_class is FailureClass.NON_RETRYABLE:
        assert verdict.next is Next.DEAD_LETTER
