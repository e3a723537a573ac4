"""What only the JetStream queue has to show: several gateways on one queue, a gateway that dies holding leases,
a submitter that stops between its publish and its record, and a task that keeps killing its dispatchers.

Real NATS at `NEST_NATS_URL` (skipped without one, failing under `CI`), real time: leases of about a second,
and every "it is due now" step polls instead of asserting on timing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import pytest

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.jetstream.queue import JetStreamTaskQueue
from gateway.asyncq.jetstream.records import message_headers
from gateway.asyncq.tasks import Outcome, Task, TaskStatus
from nest.contracts.errors import PayloadTooLarge
from tests.unit.gateway.asyncq.test_queue_contract import (
    DUE_WITHIN_S,
    NATS_URL,
    new_task,
    open_jetstream,
    require_nats,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

T = TypeVar("T")
KEY = QueueKey("hello", 0)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    await require_nats()
    name = f"T{uuid.uuid4().hex[:12]}"
    yield name
    cleaner = JetStreamTaskQueue(NATS_URL, prefix=name, shards=2)
    await cleaner.open()
    await cleaner.destroy()
    await cleaner.close()


@pytest.fixture
async def gateways(prefix: str) -> AsyncIterator[tuple[JetStreamTaskQueue, JetStreamTaskQueue]]:
    """Two gateways (two connections) sharing one queue."""
    first = await open_jetstream(prefix)
    second = await open_jetstream(prefix)
    yield first, second
    await first.close()
    await second.close()


async def eventually(attempt: Callable[[], Awaitable[T]]) -> T:
    deadline = time.monotonic() + DUE_WITHIN_S
    while True:
        answer = await attempt()
        if answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def test_gateways_sharing_a_queue_never_lease_the_same_task(
    gateways: tuple[JetStreamTaskQueue, JetStreamTaskQueue],
) -> None:
    first, second = gateways
    submitted = await asyncio.gather(*(first.submit(new_task(str(n).encode(), at=time.time())) for n in range(40)))
    leased: list[Task] = []
    by_second = 0
    while len(leased) < 40:
        batches = await asyncio.gather(
            first.lease(KEY, owner="g1", now=time.time(), lease_s=30, limit=7),
            second.lease(KEY, owner="g2", now=time.time(), lease_s=30, limit=7),
        )
        assert any(batches), "due tasks are leased by one gateway or the other"
        leased += [*batches[0], *batches[1]]
        by_second += len(batches[1])
    assert sorted(task.id for task in leased) == sorted(item.task.id for item in submitted)
    others = 40 - by_second
    assert await second.ready(now=time.time()) == {KEY: others}, "another gateway's running tasks may be lost ones"
    assert await first.backlog("hello") == 40


async def test_the_same_idempotency_key_at_two_gateways_is_one_task(
    gateways: tuple[JetStreamTaskQueue, JetStreamTaskQueue],
) -> None:
    first, second = gateways
    answers = await asyncio.gather(
        *(gateway.submit(new_task(b"same", at=time.time(), idempotency_key="k")) for gateway in (first, second) * 3)
    )
    assert len({answer.task.id for answer in answers}) == 1
    assert await first.backlog("hello") == 1


async def test_a_gateway_that_died_holding_leases_loses_them_after_ack_wait(prefix: str) -> None:
    crashed = await open_jetstream(prefix)
    submitted = await crashed.submit(new_task(b"work", at=time.time()))
    [task] = await crashed.lease(KEY, owner="crashed", now=time.time(), lease_s=1.0, limit=1)
    await crashed.store.nc.close()  # no ack, no nak: JetStream redelivers once ack_wait has passed
    survivor = await open_jetstream(prefix)
    try:
        [again] = await eventually(lambda: survivor.lease(KEY, owner="survivor", now=time.time(), lease_s=1.0, limit=1))
        assert (again.id, again.payload, again.attempts, again.lease_owner) == (task.id, b"work", 1, "survivor")
        assert await survivor.settle(task.id, owner="survivor", outcome=Outcome(TaskStatus.SUCCEEDED), now=time.time())
        done = await survivor.get(submitted.task.id)
        assert done is not None
        assert done.status is TaskStatus.SUCCEEDED
    finally:
        await survivor.close()


async def test_extend_keeps_jetstream_from_delivering_a_long_run_again(
    gateways: tuple[JetStreamTaskQueue, JetStreamTaskQueue],
) -> None:
    runner, other = gateways
    await runner.submit(new_task(at=time.time()))
    [task] = await runner.lease(KEY, owner="runner", now=time.time(), lease_s=1.0, limit=1)
    for _ in range(5):  # 2.5 s: two and a half leases, kept by progress acks
        await asyncio.sleep(0.5)
        assert await runner.extend(task.id, owner="runner", until=time.time() + 1.0)
        assert await other.lease(KEY, owner="other", now=time.time(), lease_s=1.0, limit=1) == []
    assert await runner.settle(task.id, owner="runner", outcome=Outcome(TaskStatus.SUCCEEDED), now=time.time())


async def test_a_task_whose_submitter_stopped_before_its_record_is_rebuilt_from_its_message(prefix: str) -> None:
    queue = await open_jetstream(prefix)
    try:
        now = time.time()
        task = Task(
            id=uuid.uuid4().hex,
            function="hello",
            status=TaskStatus.QUEUED,
            priority=0,
            payload=b"orphan",
            payload_digest="d",
            request={"method": "POST", "path": "/"},
            enqueued_at=now,
            not_before=now,
        )
        subject = queue.store.naming.work_subject("hello", 0)
        await queue.store.publish(subject, b"orphan", message_headers(task, msg_id=f"{task.id}.0"))
        assert await queue.get(task.id) is None
        [leased] = await queue.lease(KEY, owner="d", now=time.time(), lease_s=30, limit=1)
        assert leased == replace(
            task, status=TaskStatus.RUNNING, lease_owner="d", lease_until=leased.lease_until, **_started(leased)
        )
    finally:
        await queue.close()


def _started(task: Task) -> dict[str, float | None]:
    return {"started_at": task.started_at, "first_started_at": task.first_started_at}


async def test_a_task_that_keeps_killing_its_dispatchers_is_dead_lettered_at_max_deliver(prefix: str) -> None:
    """With `max_deliver=2`, the delivery after one lost dispatcher is the last: the task is buried, not run."""
    crashed = JetStreamTaskQueue(NATS_URL, prefix=prefix, shards=2, max_deliver=2)
    await crashed.open()
    submitted = await crashed.submit(new_task(b"poison", at=time.time()))
    await crashed.lease(KEY, owner="d1", now=time.time(), lease_s=0.5, limit=1)
    await crashed.store.nc.close()
    queue = JetStreamTaskQueue(NATS_URL, prefix=prefix, shards=2, max_deliver=2)
    await queue.open()
    try:

        async def buried() -> Task | None:
            assert await queue.lease(KEY, owner="d2", now=time.time(), lease_s=0.5, limit=1) == []
            found = await queue.get(submitted.task.id)
            return found if found is not None and found.status is TaskStatus.DEAD_LETTERED else None

        dead = await eventually(buried)
        assert dead is not None
        assert (dead.payload, dead.attempts, dead.error) == (
            b"poison",
            1,
            "delivered 2 times without an outcome (max_deliver): poison task",
        )
        assert await queue.backlog("hello") == 0
    finally:
        await queue.close()


async def test_a_body_over_the_servers_max_payload_is_refused_and_the_connection_kept(
    gateways: tuple[JetStreamTaskQueue, JetStreamTaskQueue],
) -> None:
    queue, _ = gateways
    limit = queue.store.nc.max_payload
    with pytest.raises(PayloadTooLarge, match="async request body: larger than the limit"):
        await queue.submit(new_task(b"x" * limit, at=time.time()))
    fits = await queue.submit(new_task(b"x" * (limit - 2048), at=time.time()))
    stored = await queue.get(fits.task.id)
    assert stored is not None
    assert len(stored.payload) == limit - 2048
