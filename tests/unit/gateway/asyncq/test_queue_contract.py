"""The contract every async queue backend keeps, run against SQLite and against NATS JetStream.

SQLite reads no clock, so its run uses virtual time (`advance` is instant). JetStream's lease (`ack_wait`) and
delays (nak-with-delay) are timers in the broker, so its run uses the real clock with leases and delays of about
a second, and every "it is due now" step polls (`until_due`) instead of asserting on timing.

The JetStream run needs a NATS server with JetStream at `NEST_NATS_URL` (default nats://127.0.0.1:4222); without
one it is skipped, except under `CI`, where it fails. Each test works under its own stream and bucket prefix and
deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import TYPE_CHECKING, TypeVar

import nats
import pytest

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.jetstream.queue import JetStreamTaskQueue
from gateway.asyncq.sqlite import SqliteTaskQueue
from gateway.asyncq.tasks import RESULT_MAX_BYTES, NewTask, Outcome, TaskStatus
from nest.contracts.errors import Conflict, NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from gateway.asyncq.api import TaskStore

T = TypeVar("T")
KEY = QueueKey("hello", 0)
NATS_URL = os.environ.get("NEST_NATS_URL", "nats://127.0.0.1:4222")
DUE_WITHIN_S = 10.0
"""How long a real-clock step may wait for the broker to make a task due (it takes ~a second; the machine is noisy)."""


class Clock:
    """Virtual time for SQLite (`advance` returns at once), the real clock for JetStream."""

    def __init__(self, *, real: bool) -> None:
        self.real = real
        self._virtual = 100.0

    def now(self) -> float:
        return time.time() if self.real else self._virtual

    async def advance(self, seconds: float) -> None:
        if self.real:
            await asyncio.sleep(seconds)
        else:
            self._virtual += seconds

    async def until_due(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until it answers something truthy (real clock: the broker's timer may lag a little)."""
        deadline = time.monotonic() + DUE_WITHIN_S
        while True:
            answer = await attempt()
            if answer or not self.real or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.05)


def new_task(payload: bytes = b"{}", *, at: float, not_before: float | None = None, **extra: object) -> NewTask:
    return NewTask(
        function=str(extra.pop("function", "hello")),
        payload=payload,
        payload_digest=hashlib.sha256(payload).hexdigest(),
        enqueued_at=at,
        not_before=at if not_before is None else not_before,
        **extra,  # type: ignore[arg-type]
    )


_reachability: list[str | None] = []
"""The answer of the first `nats_reachable` call (asked once per test session)."""


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the reachability probe reports its failure itself."""


async def nats_reachable() -> str | None:
    """None if NATS with JetStream answers at `NEST_NATS_URL`, else why not."""
    if _reachability:
        return _reachability[0]
    problem = None
    try:
        async with asyncio.timeout(3):
            connection = await nats.connect(NATS_URL, connect_timeout=1, allow_reconnect=False, error_cb=_quiet)
            try:
                await connection.jetstream().account_info()
            finally:
                await connection.close()
    except Exception as exc:  # any failure means "not usable here"
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    _reachability.append(problem)
    return problem


async def require_nats() -> None:
    """Skip the test without NATS JetStream, or fail it under `CI`, naming what is missing."""
    problem = await nats_reachable()
    if problem is not None:
        reason = f"no NATS JetStream at {NATS_URL} (set NEST_NATS_URL): {problem}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


async def open_jetstream(prefix: str) -> JetStreamTaskQueue:
    await require_nats()
    queue = JetStreamTaskQueue(NATS_URL, prefix=prefix, shards=2)
    await queue.open()
    return queue


@pytest.fixture(params=["sqlite", "jetstream"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(backend: str) -> Clock:
    return Clock(real=backend == "jetstream")


@pytest.fixture
async def queue(backend: str, tmp_path: Path) -> AsyncIterator[TaskStore]:
    if backend == "sqlite":
        opened = SqliteTaskQueue(tmp_path / "tasks.db")
        await opened.open()
        yield opened
        await opened.close()
        return
    stream_queue = await open_jetstream(f"T{uuid.uuid4().hex[:12]}")
    try:
        yield stream_queue
    finally:
        await stream_queue.destroy()
        await stream_queue.close()


async def reopen(backend: str, queue: TaskStore, tmp_path: Path) -> TaskStore:
    """A second queue object over the same storage (a restarted gateway)."""
    if isinstance(queue, SqliteTaskQueue):
        await queue.close()
        second = SqliteTaskQueue(tmp_path / "tasks.db")
        await second.open()
        return second
    assert isinstance(queue, JetStreamTaskQueue)
    other = JetStreamTaskQueue(NATS_URL, prefix=queue.store.naming.prefix, shards=queue.store.naming.shards)
    await other.open()
    return other


async def test_a_submitted_task_is_stored_and_survives_a_reopen(
    backend: str, queue: TaskStore, clock: Clock, tmp_path: Path
) -> None:
    submitted = await queue.submit(new_task(b'{"n": 1}', at=clock.now(), request={"method": "POST", "path": "/"}))
    second = await reopen(backend, queue, tmp_path)
    try:
        task = await second.get(submitted.task.id)
    finally:
        if second is not queue:
            await second.close()  # type: ignore[attr-defined]
    assert task is not None
    assert (task.status, task.payload, task.request) == (
        TaskStatus.QUEUED,
        b'{"n": 1}',
        {"method": "POST", "path": "/"},
    )


async def test_concurrent_submissions_are_all_stored(queue: TaskStore, clock: Clock) -> None:
    results = await asyncio.gather(*(queue.submit(new_task(str(n).encode(), at=clock.now())) for n in range(300)))
    assert len({result.task.id for result in results}) == 300
    assert await queue.backlog("hello") == 300
    assert await queue.ready(now=clock.now()) == {KEY: 300}


async def test_sqlite_concurrent_submissions_share_commits(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    try:
        await asyncio.gather(*(queue.submit(new_task(str(n).encode(), at=100.0)) for n in range(300)))
        assert queue.groups_committed < 300 / 4, "submissions waiting together are committed together"
    finally:
        await queue.close()


async def test_the_same_idempotency_key_and_payload_returns_the_first_invocation(
    queue: TaskStore, clock: Clock
) -> None:
    first = await queue.submit(new_task(b"a", at=clock.now(), idempotency_key="order-1"))
    again = await queue.submit(new_task(b"a", at=clock.now() + 1, idempotency_key="order-1"))
    assert first.created
    assert not again.created
    assert again.task.id == first.task.id
    with pytest.raises(Conflict, match="different payload; use a new key"):
        await queue.submit(new_task(b"b", at=clock.now(), idempotency_key="order-1"))
    other_function = await queue.submit(new_task(b"b", at=clock.now(), idempotency_key="order-1", function="other"))
    assert other_function.created


async def test_a_later_same_key_submission_gets_the_first_result(queue: TaskStore, clock: Clock) -> None:
    first = await queue.submit(new_task(b"a", at=clock.now(), idempotency_key="k"))
    [task] = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    assert await queue.settle(task.id, owner="d", outcome=Outcome(TaskStatus.SUCCEEDED, b"done", 200), now=clock.now())
    again = await queue.submit(new_task(b"a", at=clock.now(), idempotency_key="k"))
    assert (again.created, again.task.id, again.task.status, again.task.result) == (
        False,
        first.task.id,
        TaskStatus.SUCCEEDED,
        b"done",
    )
    assert await queue.ready(now=clock.now()) == {}


async def test_a_delayed_task_is_not_due_before_its_time(queue: TaskStore, clock: Clock) -> None:
    start = clock.now()
    submitted = await queue.submit(new_task(at=start, not_before=start + 1.0))
    assert submitted.task.status is TaskStatus.DELAYED
    assert await queue.ready(now=clock.now()) == {}
    assert await queue.lease(KEY, owner="d1", now=clock.now(), lease_s=30, limit=10) == []
    await clock.advance(1.0)
    assert await clock.until_due(lambda: queue.ready(now=clock.now())) == {KEY: 1}
    now = clock.now()
    [leased] = await queue.lease(KEY, owner="d1", now=now, lease_s=30, limit=10)
    assert leased.id == submitted.task.id
    assert (leased.status, leased.lease_owner, leased.lease_until) == (TaskStatus.RUNNING, "d1", now + 30)


async def test_lease_takes_the_oldest_first_and_never_twice(queue: TaskStore, clock: Clock) -> None:
    start = clock.now()
    ids = [(await queue.submit(new_task(str(n).encode(), at=start))).task.id for n in range(5)]
    first = await queue.lease(KEY, owner="d1", now=clock.now(), lease_s=30, limit=3)
    second = await queue.lease(KEY, owner="d2", now=clock.now(), lease_s=30, limit=3)
    assert [task.id for task in first] == ids[:3]
    assert [task.id for task in second] == ids[3:]
    assert await queue.lease(KEY, owner="d3", now=clock.now(), lease_s=30, limit=3) == []


async def test_a_lease_that_ran_out_is_taken_over_and_the_old_holder_cannot_settle(
    queue: TaskStore, clock: Clock
) -> None:
    await queue.submit(new_task(at=clock.now()))
    [task] = await queue.lease(KEY, owner="crashed", now=clock.now(), lease_s=2.0, limit=1)
    assert await queue.lease(KEY, owner="d2", now=clock.now(), lease_s=2.0, limit=1) == []
    await clock.advance(1.0)
    assert await queue.extend(task.id, owner="crashed", until=clock.now() + 2.0)
    await clock.advance(1.4)  # past the first lease, within the extended one
    assert await queue.lease(KEY, owner="d2", now=clock.now(), lease_s=2.0, limit=1) == []
    await clock.advance(0.8)
    [again] = await clock.until_due(lambda: queue.lease(KEY, owner="d2", now=clock.now(), lease_s=2.0, limit=1))
    assert again.id == task.id
    assert again.attempts == 1, "the lost attempt counts"
    assert again.error == "lease expired: the dispatcher running it stopped"
    assert not await queue.settle(task.id, owner="crashed", outcome=Outcome(TaskStatus.SUCCEEDED), now=clock.now())
    assert not await queue.extend(task.id, owner="crashed", until=clock.now() + 30)
    assert await queue.settle(task.id, owner="d2", outcome=Outcome(TaskStatus.SUCCEEDED, b"ok", 200), now=clock.now())
    done = await queue.get(task.id)
    assert done is not None
    assert (done.status, done.attempts, done.result, done.lease_owner) == (TaskStatus.SUCCEEDED, 2, b"ok", None)
    assert await queue.backlog("hello") == 0


async def test_retries_count_attempts_and_throttles_apart_and_keep_time_spent(queue: TaskStore, clock: Clock) -> None:
    start = clock.now()
    submitted = await queue.submit(new_task(at=start))
    await clock.advance(0.1)
    first_start = clock.now()
    [task] = await queue.lease(KEY, owner="d", now=first_start, lease_s=30, limit=1)
    await clock.advance(0.2)
    failed_at = clock.now()
    assert await queue.retry(
        task.id, owner="d", at=failed_at + 0.5, spent_attempt=True, error="ValueError", now=failed_at
    )
    assert await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1) == []
    await clock.advance(0.5)
    [task] = await clock.until_due(lambda: queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1))
    second_start = task.started_at
    assert second_start is not None
    throttled_at = clock.now()
    assert await queue.retry(
        task.id, owner="d", at=throttled_at, spent_attempt=False, error="throttled", now=throttled_at
    )
    [task] = await clock.until_due(lambda: queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1))
    third_start = task.started_at
    assert third_start is not None
    await clock.advance(0.3)
    end = clock.now()
    big = Outcome(TaskStatus.SUCCEEDED, b"x" * (RESULT_MAX_BYTES + 5))
    assert await queue.settle(task.id, owner="d", outcome=big, now=end)
    done = await queue.get(submitted.task.id)
    assert done is not None
    assert (done.attempts, done.throttles) == (2, 1)
    running = (failed_at - first_start) + (throttled_at - second_start) + (end - third_start)
    assert done.running_s == pytest.approx(running)
    assert done.queued_s == pytest.approx(end - start - running)
    assert (done.first_started_at, done.finished_at) == (first_start, end)
    assert done.result is not None
    assert len(done.result) == RESULT_MAX_BYTES
    assert done.result_truncated


async def test_cancel_takes_waiting_tasks_only(queue: TaskStore, clock: Clock) -> None:
    waiting = await queue.submit(new_task(at=clock.now()))
    cancelled = await queue.cancel(waiting.task.id, now=clock.now())
    assert cancelled.status is TaskStatus.CANCELLED
    assert await queue.ready(now=clock.now()) == {}
    running = await queue.submit(new_task(b"r", at=clock.now()))
    await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    with pytest.raises(Conflict, match="is running: only queued or delayed tasks can be cancelled"):
        await queue.cancel(running.task.id, now=clock.now())
    with pytest.raises(NotFound):
        await queue.cancel("nope", now=clock.now())


async def test_pause_hides_a_function_from_dispatch_and_batch_delete_cancels_its_backlog(
    queue: TaskStore, clock: Clock
) -> None:
    for n in range(3):
        await queue.submit(new_task(str(n).encode(), at=clock.now()))
    await queue.submit(new_task(at=clock.now(), not_before=clock.now() + 60))
    await queue.submit(new_task(at=clock.now(), function="other"))
    await queue.set_paused("hello", True)
    assert await queue.ready(now=clock.now()) == {QueueKey("other", 0): 1}
    await queue.set_paused("hello", False)
    assert await queue.ready(now=clock.now()) == {KEY: 3, QueueKey("other", 0): 1}
    assert await queue.cancel_waiting("hello", now=clock.now()) == 4
    assert await queue.backlog("hello") == 0
    assert await queue.ready(now=clock.now()) == {QueueKey("other", 0): 1}
    assert [t.status for t in await queue.list_tasks(function="hello", status=None, limit=10)] == [
        TaskStatus.CANCELLED
    ] * 4


async def test_a_dead_lettered_task_keeps_its_payload_and_can_be_redriven_once(queue: TaskStore, clock: Clock) -> None:
    submitted = await queue.submit(new_task(b"precious", at=clock.now()))
    [task] = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    dead_outcome = Outcome(TaskStatus.DEAD_LETTERED, error="NonRetryable")
    assert await queue.settle(task.id, owner="d", outcome=dead_outcome, now=clock.now())
    dead = await queue.list_tasks(function=None, status=TaskStatus.DEAD_LETTERED, limit=10)
    assert [(t.id, t.error) for t in dead] == [(submitted.task.id, "NonRetryable")]
    kept = await queue.get(task.id)
    assert kept is not None
    assert kept.payload == b"precious"
    now = clock.now()
    redriven = await queue.redrive(task.id, now=now)
    assert (redriven.status, redriven.attempts, redriven.not_before) == (TaskStatus.QUEUED, 0, now)
    with pytest.raises(Conflict, match="only dead-lettered or expired tasks are redriven"):
        await queue.redrive(task.id, now=clock.now())
    [again] = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    assert (again.id, again.payload) == (task.id, b"precious")


async def test_purge_dead_deletes_dead_letters_only(queue: TaskStore, clock: Clock) -> None:
    await queue.submit(new_task(b"1", at=clock.now()))
    await queue.submit(new_task(b"2", at=clock.now()))
    first, second = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=2)
    await queue.settle(first.id, owner="d", outcome=Outcome(TaskStatus.EXPIRED, error="too old"), now=clock.now())
    await queue.settle(second.id, owner="d", outcome=Outcome(TaskStatus.SUCCEEDED), now=clock.now())
    assert await queue.purge_dead("other") == 0
    assert await queue.purge_dead(None) == 1
    assert await queue.get(first.id) is None
    assert await queue.get(second.id) is not None


async def test_an_idempotency_key_of_a_purged_task_starts_a_new_one(queue: TaskStore, clock: Clock) -> None:
    first = await queue.submit(new_task(b"a", at=clock.now(), idempotency_key="k"))
    [task] = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    await queue.settle(task.id, owner="d", outcome=Outcome(TaskStatus.DEAD_LETTERED, error="bad"), now=clock.now())
    assert await queue.purge_dead("hello") == 1
    again = await queue.submit(new_task(b"a", at=clock.now(), idempotency_key="k"))
    assert again.created
    assert again.task.id != first.task.id
    [rerun] = await queue.lease(KEY, owner="d", now=clock.now(), lease_s=30, limit=1)
    assert rerun.id == again.task.id
