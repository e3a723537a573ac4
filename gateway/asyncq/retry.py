"""What happens to an async task after an attempt failed: retry when, dead-letter, or expire. Pure.

Failures fall in three classes (AWS Lambda's async semantics, which users know, extended by the seed's
"throttling" class):

- **non-retryable**: the handler raised `nest.NonRetryable`, or answered 4xx other than 408 and 429. Running it
  again gives the same answer, so the task goes straight to the dead-letter store.
- **retryable**: any other exception, a timeout (504/408), a 5xx, an instance that crashed mid-run. Retried with
  exponential backoff and full jitter up to `max_retries` further attempts (2 by default, like Lambda).
- **throttled**: the handler raised `nest.Throttled(retry_after=...)`, answered 429, or the platform had no
  capacity (at `max` instances). Backs off *without spending an attempt*, honouring `Retry-After`, until the
  task is older than `max_event_age`.

Every verdict checks the event age first: a task that would only run after its maximum age expires instead.
Jitter is an argument (a number in [0, 1)) so that the same inputs always give the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

NON_RETRYABLE_ERROR = "NonRetryable"
THROTTLED_ERROR = "Throttled"


class FailureClass(StrEnum):
    NON_RETRYABLE = "non_retryable"
    RETRYABLE = "retryable"
    THROTTLED = "throttled"


class Next(StrEnum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt as the dispatcher saw it.

    `status` is the instance's HTTP status (None when no answer came: crash, connection lost, no capacity);
    `error_type` the handler's exception class name when the runtime reported one, or one of the platform's
    own kinds: `timeout`, `crash`, `no_capacity`.
    """

    status: int | None
    error_type: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-function `async:` settings that shape retries; durations in seconds."""

    max_retries: int = 2
    max_event_age_s: float = 6 * 3600.0
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    throttle_base_s: float = 1.0
    throttle_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Verdict:
    next: Next
    at: float | None
    """When to run again (same clock as `now`), for `Next.RETRY`."""
    spends_attempt: bool
    failure_class: FailureClass
    reason: str


def classify_failure(failure: Failure) -> FailureClass:
    """Which of the three classes a failed attempt belongs to."""
    if failure.error_type == NON_RETRYABLE_ERROR:
        return FailureClass.NON_RETRYABLE
    if failure.error_type in {THROTTLED_ERROR, "no_capacity"} or failure.status == 429:
        return FailureClass.THROTTLED
    if failure.status is not None and 400 <= failure.status < 500 and failure.status != 408:
        return FailureClass.NON_RETRYABLE
    return FailureClass.RETRYABLE


def backoff_s(*, base_s: float, cap_s: float, step: int, jitter: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**step)], never below base/2.

    `step` counts from 0; `jitter` is a draw in [0, 1). The floor keeps a burst of failures from retrying all at
    once at ~0 s (pure full jitter allows it); the cap bounds the wait.
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(step, 62))
    return max(base_s / 2, ceiling * jitter)


def next_step(
    policy: RetryPolicy,
    failure: Failure,
    *,
    attempts: int,
    throttles: int,
    enqueued_at: float,
    now: float,
    jitter: float,
) -> Verdict:
    """The verdict after a failed attempt.

    `attempts` counts attempts that ended in a non-throttled failure so far, this one included; `throttles`
    counts throttled attempts so far, this one included. `enqueued_at` and `now` share one clock (epoch seconds).
    """
    kind = classify_failure(failure)
    age_s = now - enqueued_at
    if kind is FailureClass.NON_RETRYABLE:
        why = failure.error_type or f"HTTP {failure.status}"
        return Verdict(Next.DEAD_LETTER, None, True, kind, f"non-retryable: {why}")
    if kind is FailureClass.THROTTLED:
        wait_s = backoff_s(
            base_s=policy.throttle_base_s, cap_s=policy.throttle_max_s, step=max(throttles - 1, 0), jitter=jitter
        )
        if failure.retry_after_s is not None:
            wait_s = max(wait_s, min(failure.retry_after_s, policy.throttle_max_s))
        return _unless_too_old(policy, Verdict(Next.RETRY, now + wait_s, False, kind, "throttled"), age_s, wait_s)
    if attempts > policy.max_retries:
        return Verdict(
            Next.DEAD_LETTER,
            None,
            True,
            kind,
            f"retries exhausted: {attempts} attempts (max_retries {policy.max_retries}); last: {_describe(failure)}",
        )
    wait_s = backoff_s(base_s=policy.base_delay_s, cap_s=policy.max_delay_s, step=attempts - 1, jitter=jitter)
    verdict = Verdict(Next.RETRY, now + wait_s, True, kind, f"retryable: {_describe(failure)}")
    return _unless_too_old(policy, verdict, age_s, wait_s)


def _unless_too_old(policy: RetryPolicy, verdict: Verdict, age_s: float, wait_s: float) -> Verdict:
    if age_s + wait_s <= policy.max_event_age_s:
        return verdict
    return Verdict(
        Next.EXPIRE,
        None,
        verdict.spends_attempt,
        verdict.failure_class,
        f"max_event_age {policy.max_event_age_s:g}s reached ({verdict.reason}; age {age_s:.0f}s + wait {wait_s:.0f}s)",
    )


def is_expired(policy: RetryPolicy, *, enqueued_at: float, now: float) -> bool:
    """A task picked after its maximum age is dropped to the dead-letter store instead of running."""
    return now - enqueued_at > policy.max_event_age_s


def _describe(failure: Failure) -> str:
    if failure.error_type and failure.status is not None:
        return f"{failure.error_type} (HTTP {failure.status})"
    if failure.error_type:
        return failure.error_type
    return f"HTTP {failure.status}" if failure.status is not None else "no answer"
