"""The SQLite task queue against a real database file: the contract every queue backend must keep."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import pytest

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.sqlite import SqliteTaskQueue
from gateway.asyncq.tasks import RESULT_MAX_BYTES, NewTask, Outcome, TaskStatus
from nest.contracts.errors import Conflict, NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

KEY = QueueKey("hello", 0)


def new_task(payload: bytes = b"{}", *, at: float = 100.0, not_before: float | None = None, **extra: object) -> NewTask:
    return NewTask(
        function=str(extra.pop("function", "hello")),
        payload=payload,
        payload_digest=hashlib.sha256(payload).hexdigest(),
        enqueued_at=at,
        not_before=at if not_before is None else not_before,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SqliteTaskQueue]:
    opened = SqliteTaskQueue(tmp_path / "tasks.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_a_submitted_task_is_stored_and_survives_a_reopen(tmp_path: Path) -> None:
    first = SqliteTaskQueue(tmp_path / "tasks.db")
    await first.open()
    submitted = await first.submit(new_task(b'{"n": 1}', request={"method": "POST", "path": "/"}))
    await first.close()
    second = SqliteTaskQueue(tmp_path / "tasks.db")
    await second.open()
    try:
        task = await second.get(submitted.task.id)
    finally:
        await second.close()
    assert task is not None
    assert (task.status, task.payload, task.request) == (
        TaskStatus.QUEUED,
        b'{"n": 1}',
        {"method": "POST", "path": "/"},
    )


async def test_concurrent_submissions_share_commits(queue: SqliteTaskQueue) -> None:
    results = await asyncio.gather(*(queue.submit(new_task(str(n).encode())) for n in range(300)))
    assert len({result.task.id for result in results}) == 300
    assert queue.groups_committed < 300 / 4, "submissions waiting together are committed together"
    assert await queue.backlog("hello") == 300


async def test_the_same_idempotency_key_and_payload_returns_the_first_invocation(queue: SqliteTaskQueue) -> None:
    first = await queue.submit(new_task(b"a", idempotency_key="order-1"))
    again = await queue.submit(new_task(b"a", idempotency_key="order-1", at=200.0))
    assert first.created
    assert not again.created
    assert again.task.id == first.task.id
    with pytest.raises(Conflict, match="different payload; use a new key"):
        await queue.submit(new_task(b"b", idempotency_key="order-1"))
    other_function = await queue.submit(new_task(b"b", idempotency_key="order-1", function="other"))
    assert other_function.created


async def test_a_delayed_task_is_not_due_before_its_time(queue: SqliteTaskQueue) -> None:
    submitted = await queue.submit(new_task(not_before=160.0))
    assert submitted.task.status is TaskStatus.DELAYED
    assert await queue.ready(now=159.0) == {}
    assert await queue.lease(KEY, owner="d1", now=159.0, lease_s=30, limit=10) == []
    assert await queue.ready(now=160.0) == {KEY: 1}
    [leased] = await queue.lease(KEY, owner="d1", now=160.0, lease_s=30, limit=10)
    assert leased.id == submitted.task.id
    assert (leased.status, leased.lease_owner, leased.lease_until) == (TaskStatus.RUNNING, "d1", 190.0)


async def test_lease_takes_the_oldest_first_and_never_twice(queue: SqliteTaskQueue) -> None:
    ids = [(await queue.submit(new_task(at=100.0 + n))).task.id for n in range(5)]
    first = await queue.lease(KEY, owner="d1", now=200.0, lease_s=30, limit=3)
    second = await queue.lease(KEY, owner="d2", now=200.0, lease_s=30, limit=3)
    assert [task.id for task in first] == ids[:3]
    assert [task.id for task in second] == ids[3:]


async def test_a_lease_that_ran_out_is_taken_over_and_the_old_holder_cannot_settle(queue: SqliteTaskQueue) -> None:
    await queue.submit(new_task())
    [task] = await queue.lease(KEY, owner="crashed", now=100.0, lease_s=10, limit=1)
    assert await queue.lease(KEY, owner="d2", now=105.0, lease_s=10, limit=1) == []
    assert await queue.extend(task.id, owner="crashed", until=112.0)
    assert await queue.lease(KEY, owner="d2", now=111.0, lease_s=10, limit=1) == []
    [again] = await queue.lease(KEY, owner="d2", now=113.0, lease_s=10, limit=1)
    assert again.id == task.id
    assert again.attempts == 1, "the lost attempt counts"
    assert again.error == "lease expired: the dispatcher running it stopped"
    assert not await queue.settle(task.id, owner="crashed", outcome=Outcome(TaskStatus.SUCCEEDED), now=114.0)
    assert not await queue.extend(task.id, owner="crashed", until=130.0)
    assert await queue.settle(task.id, owner="d2", outcome=Outcome(TaskStatus.SUCCEEDED, b"ok", 200), now=114.0)
    done = await queue.get(task.id)
    assert done is not None
    assert (done.status, done.attempts, done.result, done.lease_owner) == (TaskStatus.SUCCEEDED, 2, b"ok", None)


async def test_retries_count_attempts_and_throttles_apart_and_keep_time_spent(queue: SqliteTaskQueue) -> None:
    submitted = await queue.submit(new_task(at=100.0))
    [task] = await queue.lease(KEY, owner="d", now=101.0, lease_s=30, limit=1)
    assert await queue.retry(task.id, owner="d", at=110.0, spent_attempt=True, error="ValueError", now=103.0)
    [task] = await queue.lease(KEY, owner="d", now=110.0, lease_s=30, limit=1)
    assert await queue.retry(task.id, owner="d", at=110.0, spent_attempt=False, error="throttled", now=110.0)
    [task] = await queue.lease(KEY, owner="d", now=120.0, lease_s=30, limit=1)
    assert await queue.settle(
        task.id, owner="d", outcome=Outcome(TaskStatus.SUCCEEDED, b"x" * (RESULT_MAX_BYTES + 5)), now=124.0
    )
    done = await queue.get(submitted.task.id)
    assert done is not None
    assert (done.attempts, done.throttles) == (2, 1)
    assert done.running_s == pytest.approx(6.0)
    assert done.queued_s == pytest.approx(18.0)
    assert (done.first_started_at, done.finished_at) == (101.0, 124.0)
    assert done.result is not None
    assert len(done.result) == RESULT_MAX_BYTES
    assert done.result_truncated


async def test_cancel_takes_waiting_tasks_only(queue: SqliteTaskQueue) -> None:
    waiting = await queue.submit(new_task())
    cancelled = await queue.cancel(waiting.task.id, now=101.0)
    assert cancelled.status is TaskStatus.CANCELLED
    running = await queue.submit(new_task(b"r"))
    await queue.lease(KEY, owner="d", now=102.0, lease_s=30, limit=1)
    with pytest.raises(Conflict, match="is running: only queued or delayed tasks can be cancelled"):
        await queue.cancel(running.task.id, now=103.0)
    with pytest.raises(NotFound):
        await queue.cancel("nope", now=103.0)


async def test_pause_hides_a_function_from_dispatch_and_batch_delete_cancels_its_backlog(
    queue: SqliteTaskQueue,
) -> None:
    for n in range(3):
        await queue.submit(new_task(str(n).encode()))
    await queue.submit(new_task(function="other"))
    await queue.set_paused("hello", True)
    assert await queue.ready(now=200.0) == {QueueKey("other", 0): 1}
    assert await queue.paused() == {"hello"}
    await queue.set_paused("hello", False)
    assert await queue.ready(now=200.0) == {KEY: 3, QueueKey("other", 0): 1}
    assert await queue.cancel_waiting("hello", now=200.0) == 3
    assert await queue.backlog("hello") == 0
    assert [t.status for t in await queue.list_tasks(function="hello", status=None, limit=10)] == [
        TaskStatus.CANCELLED
    ] * 3


async def test_a_dead_lettered_task_can_be_redriven_once(queue: SqliteTaskQueue) -> None:
    submitted = await queue.submit(new_task())
    [task] = await queue.lease(KEY, owner="d", now=101.0, lease_s=30, limit=1)
    await queue.settle(task.id, owner="d", outcome=Outcome(TaskStatus.DEAD_LETTERED, error="NonRetryable"), now=102.0)
    dead = await queue.list_tasks(function=None, status=TaskStatus.DEAD_LETTERED, limit=10)
    assert [t.id for t in dead] == [submitted.task.id]
    redriven = await queue.redrive(task.id, now=300.0)
    assert (redriven.status, redriven.attempts, redriven.not_before) == (TaskStatus.QUEUED, 0, 300.0)
    with pytest.raises(Conflict, match="only dead-lettered or expired tasks are redriven"):
        await queue.redrive(task.id, now=301.0)
