"""An async task and its life: what the queue stores, and the port every queue backend satisfies.

```
submitted ─┬─> queued ──────────────┬─> running ─┬─> succeeded
           └─> delayed (not_before) ┘     │  ^   ├─> dead_lettered   (non-retryable, retries exhausted)
                 ^                        │  │   └─> expired         (older than max_event_age when picked)
                 └────── retry at ────────┘  └── lease expired: picked again (crashed dispatcher)
queued / delayed ─> cancelled   (DELETE /api/v1/invocations/{id}, batch delete)
dead_lettered ─> queued          (nest dlq redrive)
```

Times are epoch seconds given by the caller; a backend reads no clock. A task is *leased* while it runs: only
the lease holder may finish or reschedule it, and a lease that ran out makes the task available again, so a
crashed dispatcher loses nothing and a slow one cannot complete a task another has taken over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.asyncq.fairness import QueueKey

PAYLOAD_MAX_BYTES = 1024 * 1024
"""Default async body limit (Lambda's is 256 KiB for events; OpenFaaS's queue-worker takes more)."""
RESULT_MAX_BYTES = 256 * 1024
"""Results longer than this are cut and flagged `result_truncated`."""


class TaskStatus(StrEnum):
    QUEUED = "queued"
    DELAYED = "delayed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


WAITING = frozenset({TaskStatus.QUEUED, TaskStatus.DELAYED})
FINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD_LETTERED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a submission asks for; the queue gives it an id and a sequence number."""

    function: str
    payload: bytes
    payload_digest: str
    enqueued_at: float
    not_before: float
    priority: int = 0
    idempotency_key: str | None = None
    request: dict[str, str] = field(default_factory=dict)
    """How to replay the request to the function: method, path, query, content-type."""
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    function: str
    status: TaskStatus
    priority: int
    payload: bytes
    payload_digest: str
    request: dict[str, str]
    enqueued_at: float
    not_before: float
    idempotency_key: str | None = None
    callback_url: str | None = None
    attempts: int = 0
    throttles: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None
    first_started_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    running_s: float = 0.0
    """Time spent running, over every attempt (`queued_s` is the rest of the life until the finish)."""
    result: bytes | None = None
    result_status: int | None = None
    result_truncated: bool = False
    error: str | None = None

    @property
    def queued_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.started_at
        if end is None:
            return 0.0
        return max(0.0, end - self.enqueued_at - self.running_s)


@dataclass(frozen=True, slots=True)
class Submitted:
    task: Task
    created: bool
    """False when the idempotency key matched an earlier submission with the same payload."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as the dispatcher records it."""

    status: TaskStatus
    result: bytes | None = None
    result_status: int | None = None
    error: str | None = None


class TaskQueue(Protocol):
    """Durable task storage; `SqliteTaskQueue` (embedded) and a JetStream queue satisfy it."""

    async def submit(self, new: NewTask) -> Submitted:
        """Durably store the task (returns only after the commit); same idempotency key and payload -> the first."""
        ...

    async def lease(self, key: QueueKey, *, owner: str, now: float, lease_s: float, limit: int) -> list[Task]:
        """Take up to `limit` due tasks of one (function, priority) queue, oldest first, leasing them to `owner`."""
        ...

    async def ready(self, now: float) -> dict[QueueKey, int]:
        """Due tasks per (function, priority) queue of functions that are not paused."""
        ...

    async def settle(self, task_id: str, *, owner: str, outcome: Outcome, now: float) -> bool:
        """Record the final outcome of a leased task; False when `owner` no longer holds the lease."""
        ...

    async def retry(self, task_id: str, *, owner: str, at: float, spent_attempt: bool, error: str, now: float) -> bool:
        """Put a leased task back to run no earlier than `at`; False when `owner` no longer holds the lease."""
        ...

    async def extend(self, task_id: str, *, owner: str, until: float) -> bool:
        """Keep the lease of a long run; False when `owner` no longer holds it (stop the run's side effects)."""
        ...


class TaskAdmin(Protocol):
    """What the invocations API and `nest tasks|async|dlq` ask of the queue."""

    async def get(self, task_id: str) -> Task | None: ...

    async def cancel(self, task_id: str, *, now: float) -> Task:
        """Cancel a waiting task; `NotFound` if unknown, `Conflict` if it runs or already ended."""
        ...

    async def list_tasks(self, *, function: str | None, status: TaskStatus | None, limit: int) -> list[Task]: ...

    async def set_paused(self, function: str, paused: bool) -> None: ...

    async def cancel_waiting(self, function: str, *, now: float) -> int:
        """Batch delete: cancel every queued or delayed task of the function; how many."""
        ...

    async def redrive(self, task_id: str, *, now: float) -> Task:
        """Queue a dead-lettered (or expired) task again with fresh attempts."""
        ...
