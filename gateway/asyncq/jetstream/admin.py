"""The administrative side of the JetStream queue: show, list, cancel, batch cancel, purge and redrive.

`list_tasks`, `cancel_waiting` and `purge_dead` scan the task bucket: for operators, not the dispatch path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.asyncq.jetstream.records import DEAD, Record, idempotency_record_key, message_headers
from gateway.asyncq.tasks import WAITING, Task, TaskStatus
from nest.contracts.errors import Conflict, NotFound

if TYPE_CHECKING:
    from gateway.asyncq.jetstream.store import JetStreamStore


async def get(store: JetStreamStore, task_id: str) -> Task | None:
    found = await store.record(task_id)
    if found is None:
        return None
    record = found[0]
    return replace(record.task, payload=await store.payload(record.stream, record.seq))


async def cancel(store: JetStreamStore, task_id: str, *, now: float) -> Task:
    while True:
        found = await store.record(task_id)
        if found is None:
            raise NotFound("invocation", task_id)
        record, revision = found
        task = record.task
        if task.status not in WAITING:
            state = task.status.value
            raise Conflict("invocation", task_id, f"is {state}: only queued or delayed tasks can be cancelled")
        cancelled = replace(task, status=TaskStatus.CANCELLED, finished_at=now)
        if await store.swap(replace(record, task=cancelled, stream=None, seq=None), revision) is not None:
            await store.delete(record.stream, record.seq)
            return cancelled


async def list_tasks(
    store: JetStreamStore, *, function: str | None, status: TaskStatus | None, limit: int
) -> list[Task]:
    """Newest first (by submission time)."""
    found = [
        record.task
        async for record in store.records()
        if (function is None or record.task.function == function) and (status is None or record.task.status is status)
    ]
    found.sort(key=lambda task: (task.enqueued_at, task.id), reverse=True)
    return found[:limit]


async def cancel_waiting(store: JetStreamStore, function: str, *, now: float) -> int:
    waiting = [
        record.task.id
        async for record in store.records()
        if record.task.function == function and record.task.status in WAITING
    ]
    cancelled = 0
    for task_id in waiting:
        try:
            await cancel(store, task_id, now=now)
        except (Conflict, NotFound):
            continue  # started or ended meanwhile
        cancelled += 1
    return cancelled


async def purge_dead(store: JetStreamStore, function: str | None) -> int:
    """Delete dead-lettered and expired tasks (of one function, or all), payloads included; how many."""
    dead = [
        record
        async for record in store.records()
        if record.task.status in (TaskStatus.DEAD_LETTERED, TaskStatus.EXPIRED)
        and (function is None or record.task.function == function)
    ]
    for record in dead:
        await store.forget(record.task.id)
        await store.delete(record.stream, record.seq)
        if record.task.idempotency_key is not None:  # the key is free again, as with the SQLite queue
            await store.bucket("idem").purge(idempotency_record_key(record.task.function, record.task.idempotency_key))
    return len(dead)


async def redrive(store: JetStreamStore, task_id: str, *, now: float) -> Task:
    found = await store.record(task_id)
    if found is None:
        raise NotFound("invocation", task_id)
    record, revision = found
    task = record.task
    if task.status not in DEAD:
        state = task.status.value
        raise Conflict("invocation", task_id, f"is {state}: only dead-lettered or expired tasks are redriven")
    payload = await store.payload(record.stream, record.seq)
    queued = replace(
        task,
        status=TaskStatus.QUEUED,
        not_before=now,
        attempts=0,
        throttles=0,
        finished_at=None,
        result=None,
        result_status=None,
        result_truncated=False,
    )
    generation = record.generation + 1
    subject = store.naming.work_subject(task.function, task.priority)
    stream, seq = await store.publish(subject, payload, message_headers(queued, msg_id=f"{task_id}.{generation}"))
    if await store.swap(Record(queued, stream=stream, seq=seq, generation=generation), revision) is None:
        await store.delete(stream, seq)
        raise Conflict("invocation", task_id, "changed while being redriven; try again")
    await store.delete(record.stream, record.seq)
    return replace(queued, payload=payload)
