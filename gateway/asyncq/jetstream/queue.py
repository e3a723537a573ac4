"""The scale-out async queue on NATS JetStream: `TaskStore` with the SQLite queue's semantics, for many gateways.

Streams hold the work, a KV bucket holds the truth about each task (see `records` for the layout):

- **Submit** publishes the payload to the function's shard stream (the durable commit the 202 waits for), then
  creates the task's record. An `Idempotency-Key` is claimed first in the `P_idem` bucket (atomic create: the
  same key with another payload is a 409, with the same payload the first task and its result), and its publish
  carries `Nats-Msg-Id`, so a submitter retrying after a crash cannot store the task twice.
- **Lease** pulls from the (function, priority) durable consumer: explicit ack, `ack_wait` = the lease (function
  timeout plus margin), `extend` = `in_progress()`. A dispatcher that dies leaves its messages un-acked; JetStream
  delivers them again after `ack_wait`, and the record (lease expired) lets the next dispatcher take over. The
  record is changed only by compare-and-set on its revision and names the lease holder, so a message delivered
  early (clock skew, a slow `extend`) is put back with a delay instead of running twice, and a dispatcher that
  lost its lease cannot settle.
- **Delays and retries** go to the shard's delay subject; `ready` moves the due ones to the work subject and
  naks the others with the delay left (JetStream's nak-with-delay is the timer). Keeping future work off the work
  subjects makes the work consumers' pending counts the due backlog, which is what `ready` reports.
- **Max deliver** backs the retry policy: ordinary retries are new publishes, so a message's delivery count only
  grows when its dispatcher vanished; a task that took down `max_deliver` dispatchers is dead-lettered.
- **Dead letters** keep their payload in the `P_DLQ` stream (subject per function) until redriven or purged.

`list_tasks`, `cancel_waiting` and `purge_dead` scan the task bucket: administrative calls, not the hot path.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from nats.js import api

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.jetstream.records import (
    DEAD,
    TASK_ID,
    Record,
    message_headers,
    task_from_message,
    work_consumer,
)
from gateway.asyncq.jetstream.store import JetStreamStore
from gateway.asyncq.jetstream.submit import submit
from gateway.asyncq.tasks import FINAL, RESULT_MAX_BYTES, WAITING, TaskStatus
from nest.contracts.errors import Conflict, NotFound

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from gateway.asyncq.tasks import NewTask, Outcome, Submitted, Task

logger = logging.getLogger(__name__)

DELAY_CONSUMER = "delay"
PROMOTE_BATCH = 256
LOST_LEASE = "lease expired: the dispatcher running it stopped"


class JetStreamTaskQueue:
    """`TaskStore` over NATS JetStream at `url`. `open()` before use, `close()` after."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "NEST",
        shards: int = 4,
        max_deliver: int = 5,
        duplicate_window_s: float = 120.0,
        replicas: int = 1,
    ) -> None:
        self.store = JetStreamStore(
            url, prefix=prefix, shards=shards, duplicate_window_s=duplicate_window_s, replicas=replicas
        )
        self._max_deliver = max_deliver
        self._held: dict[str, Msg] = {}
        """The message behind each task this process holds the lease of (to ack, nak or mark in progress)."""
        self._ack_waits: dict[QueueKey, float] = {}
        self._promoted: dict[int, float] = {}
        """The `now` each shard's delayed tasks were last moved at: a dispatch round's `lease` calls share their
        `ready` call's `now`, and need not move them again."""

    @classmethod
    def from_url(cls, url: str) -> JetStreamTaskQueue:
        """`nats://HOST:PORT[/PREFIX]` (`nest up --queue`): gateways given the same URL share one queue."""
        server, _, prefix = url.partition("://")[2].partition("/")
        scheme = url.partition("://")[0]
        return cls(f"{scheme}://{server}", prefix=prefix or "NEST")

    async def open(self) -> None:
        await self.store.open()
        naming = self.store.naming
        for shard in range(naming.shards):
            config = api.ConsumerConfig(
                durable_name=DELAY_CONSUMER,
                filter_subject=naming.delay_filter(shard),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=-1,
            )
            await self.store.ensure_consumer(naming.stream(shard), config)

    async def close(self) -> None:
        self._held.clear()
        await self.store.close()

    async def destroy(self) -> None:
        await self.store.destroy()

    async def submit(self, new: NewTask) -> Submitted:
        return await submit(self.store, new)

    # dispatch

    async def ready(self, now: float) -> dict[QueueKey, int]:
        """Due tasks per queue: the messages on the work subjects, after moving due delayed tasks there.

        With WorkQueue retention a message stays until acked, so this is the consumer's pending count plus its
        ack-pending count (and no consumer is needed yet). A delivered message counts unless this process holds
        its lease: it is another dispatcher's running task or one whose dispatcher died (due again after
        `ack_wait`); leasing it then finds nothing or takes it over.
        """
        naming = self.store.naming
        paused, _ = await self.store.paused()
        held: dict[QueueKey, int] = {}
        for message in self._held.values():
            key = _queue_key(message)
            held[key] = held.get(key, 0) + 1
        ready: dict[QueueKey, int] = {}
        for shard in range(naming.shards):
            await self._promote(shard, now)
            for subject, messages in (await self.store.counts(naming.stream(shard), naming.work_filter(shard))).items():
                _, _, _, _, function, priority = subject.split(".")
                key = QueueKey(function, int(priority))
                count = messages - held.get(key, 0)
                if function not in paused and count > 0:
                    ready[key] = count
        return ready

    async def _promote(self, shard: int, now: float) -> None:
        if self._promoted.get(shard) == now:
            return
        self._promoted[shard] = now
        stream = self.store.naming.stream(shard)
        for message in await self.store.pull(stream, DELAY_CONSUMER, PROMOTE_BATCH):
            headers = message.headers or {}
            task_id = headers[TASK_ID]
            found = await self._record_of(message)
            record, revision = found
            task = record.task
            if task.status in FINAL or (record.seq is not None and record.seq != message.metadata.sequence.stream):
                await message.term()  # cancelled, or a stale copy of a task that moved on
                continue
            if task.not_before > now:
                await message.nak(delay=task.not_before - now)
                continue
            generation = record.generation + 1
            subject = self.store.naming.work_subject(task.function, task.priority)
            to_stream, seq = await self.store.publish(
                subject, message.data, message_headers(task, msg_id=f"{task_id}.{generation}")
            )
            moved = replace(record, stream=to_stream, seq=seq, generation=generation)
            if await self.store.swap(moved, revision):
                await message.ack()
            else:
                await self.store.delete(to_stream, seq)
                await message.nak()  # changed meanwhile (cancelled?): decide again on the next delivery

    async def backlog(self, function: str) -> int:
        """Tasks of the function that have not finished: waiting (due or delayed) or running."""
        naming = self.store.naming
        counts = await self.store.counts(naming.stream(naming.shard(function)), naming.function_filter(function))
        return sum(counts.values())

    async def lease(self, key: QueueKey, *, owner: str, now: float, lease_s: float, limit: int) -> list[Task]:
        naming = self.store.naming
        shard = naming.shard(key.function)
        stream = naming.stream(shard)
        consumer = work_consumer(key.function, key.priority)
        await self._promote(shard, now)
        if self._ack_waits.get(key) != lease_s:
            config = api.ConsumerConfig(
                durable_name=consumer,
                filter_subject=naming.work_subject(key.function, key.priority),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=lease_s,
                max_deliver=self._max_deliver,
                max_ack_pending=-1,
            )
            await self.store.ensure_consumer(stream, config)
            self._ack_waits[key] = lease_s
        leased = []
        for message in await self.store.pull(stream, consumer, limit):
            task = await self._take(message, owner=owner, now=now, lease_s=lease_s)
            if task is not None:
                leased.append(task)
        return sorted(leased, key=lambda task: (task.not_before, task.enqueued_at))

    async def _take(self, message: Msg, *, owner: str, now: float, lease_s: float) -> Task | None:
        record, revision = await self._record_of(message)
        task = record.task
        if task.status in FINAL or (record.seq is not None and record.seq != message.metadata.sequence.stream):
            await message.term()
            return None
        lost = task.status is TaskStatus.RUNNING
        if lost and task.lease_until is not None and task.lease_until >= now:
            await message.nak(delay=max(0.1, task.lease_until - now))  # delivered early: the lease still holds
            return None
        if task.status in WAITING and task.not_before > now:
            await message.nak(delay=task.not_before - now)
            return None
        if lost and message.metadata.num_delivered >= self._max_deliver:
            await self._give_up(message, record, revision, now=now)
            return None
        taken = replace(
            task,
            status=TaskStatus.RUNNING,
            lease_owner=owner,
            lease_until=now + lease_s,
            started_at=now,
            first_started_at=task.first_started_at if task.first_started_at is not None else now,
            attempts=task.attempts + int(lost),
            error=LOST_LEASE if lost else task.error,
        )
        if not await self.store.swap(replace(record, task=taken), revision):
            await message.nak()  # changed meanwhile (cancelled, or another dispatcher took it): decide again
            return None
        self._held[task.id] = message
        return replace(taken, payload=message.data)

    async def _record_of(self, message: Msg) -> tuple[Record, int]:
        """The record of the message's task; rebuilt from the message if its submitter stopped before writing it."""
        task_id = (message.headers or {})[TASK_ID]
        found = await self.store.record(task_id)
        if found is None:
            metadata = message.metadata
            task = replace(task_from_message(message.headers or {}, message.data), payload=b"")
            await self.store.create(Record(task, stream=metadata.stream, seq=metadata.sequence.stream))
            found = await self.store.record(task_id)
            if found is None:
                raise RuntimeError(f"task {task_id}: its record vanished while being rebuilt")
        return found

    async def _give_up(self, message: Msg, record: Record, revision: int, *, now: float) -> None:
        error = f"delivered {message.metadata.num_delivered} times without an outcome (max_deliver): poison task"
        task = replace(record.task, status=TaskStatus.DEAD_LETTERED, error=error, finished_at=now)
        task = replace(task, lease_owner=None, lease_until=None, attempts=task.attempts + 1)
        dead = await self._bury(replace(record, task=task), message.data)
        if await self.store.swap(dead, revision):
            await message.term()

    async def _bury(self, record: Record, payload: bytes) -> Record:
        """Keep a dead task's payload in the dead-letter stream; the record then points there."""
        task = record.task
        headers = message_headers(task, msg_id=f"{task.id}.dlq.{record.generation}")
        if task.error:
            headers["Nest-Error"] = task.error[:1024].replace("\r", " ").replace("\n", " ")
        stream, seq = await self.store.publish(self.store.naming.dead_subject(task.function), payload, headers)
        return replace(record, stream=stream, seq=seq)

    async def _held_record(self, task_id: str, owner: str) -> tuple[Record, int] | None:
        found = await self.store.record(task_id)
        if found is None:
            return None
        task = found[0].task
        if task.status is not TaskStatus.RUNNING or task.lease_owner != owner:
            return None
        return found

    async def extend(self, task_id: str, *, owner: str, until: float) -> bool:
        found = await self._held_record(task_id, owner)
        if found is None:
            return False
        record, revision = found
        if not await self.store.swap(replace(record, task=replace(record.task, lease_until=until)), revision):
            return False
        message = self._held.get(task_id)
        if message is not None:
            await message.in_progress()  # JetStream's ack_wait starts again
        return True

    async def settle(self, task_id: str, *, owner: str, outcome: Outcome, now: float) -> bool:
        found = await self._held_record(task_id, owner)
        if found is None:
            return False
        record, revision = found
        result = outcome.result
        truncated = result is not None and len(result) > RESULT_MAX_BYTES
        task = record.task
        started_at = task.started_at if task.started_at is not None else now
        done = replace(
            task,
            status=outcome.status,
            result=result[:RESULT_MAX_BYTES] if result is not None else None,
            result_status=outcome.result_status,
            result_truncated=truncated,
            error=outcome.error,
            finished_at=now,
            running_s=task.running_s + max(0.0, now - started_at),
            attempts=task.attempts + 1,
            lease_owner=None,
            lease_until=None,
        )
        message = self._held.get(task_id)
        settled = replace(record, task=done, stream=None, seq=None)
        if outcome.status in DEAD:
            payload = message.data if message is not None else await self.store.payload(record.stream, record.seq)
            settled = await self._bury(settled, payload)
        if not await self.store.swap(settled, revision):
            return False
        await self._release(task_id, record)
        return True

    async def _release(self, task_id: str, record: Record) -> None:
        """Ack the leased message (WorkQueue retention deletes it); delete it if another process delivered it."""
        message = self._held.pop(task_id, None)
        if message is not None:
            await message.ack_sync()
        else:
            await self.store.delete(record.stream, record.seq)

    async def retry(self, task_id: str, *, owner: str, at: float, spent_attempt: bool, error: str, now: float) -> bool:
        found = await self._held_record(task_id, owner)
        if found is None:
            return False
        record, revision = found
        task = record.task
        started_at = task.started_at if task.started_at is not None else now
        again = replace(
            task,
            status=TaskStatus.DELAYED if at > now else TaskStatus.QUEUED,
            not_before=at,
            error=error,
            attempts=task.attempts + int(spent_attempt),
            throttles=task.throttles + int(not spent_attempt),
            running_s=task.running_s + max(0.0, now - started_at),
            lease_owner=None,
            lease_until=None,
        )
        message = self._held.get(task_id)
        payload = message.data if message is not None else await self.store.payload(record.stream, record.seq)
        generation = record.generation + 1
        naming = self.store.naming
        subject = (naming.delay_subject if at > now else naming.work_subject)(task.function, task.priority)
        stream, seq = await self.store.publish(
            subject, payload, message_headers(again, msg_id=f"{task_id}.{generation}")
        )
        if not await self.store.swap(Record(again, stream=stream, seq=seq, generation=generation), revision):
            await self.store.delete(stream, seq)
            return False
        await self._release(task_id, record)
        return True

    # administration

    async def get(self, task_id: str) -> Task | None:
        found = await self.store.record(task_id)
        if found is None:
            return None
        record = found[0]
        return replace(record.task, payload=await self.store.payload(record.stream, record.seq))

    async def cancel(self, task_id: str, *, now: float) -> Task:
        while True:
            found = await self.store.record(task_id)
            if found is None:
                raise NotFound("invocation", task_id)
            record, revision = found
            task = record.task
            if task.status not in WAITING:
                state = task.status.value
                raise Conflict("invocation", task_id, f"is {state}: only queued or delayed tasks can be cancelled")
            cancelled = replace(task, status=TaskStatus.CANCELLED, finished_at=now)
            if await self.store.swap(replace(record, task=cancelled, stream=None, seq=None), revision):
                await self.store.delete(record.stream, record.seq)
                return cancelled

    async def list_tasks(self, *, function: str | None, status: TaskStatus | None, limit: int) -> list[Task]:
        """Newest first (by submission time)."""
        found = [
            record.task
            async for record in self.store.records()
            if (function is None or record.task.function == function)
            and (status is None or record.task.status is status)
        ]
        found.sort(key=lambda task: (task.enqueued_at, task.id), reverse=True)
        return found[:limit]

    async def set_paused(self, function: str, paused: bool) -> None:
        await self.store.set_paused(function, paused)

    async def paused(self) -> set[str]:
        functions, _ = await self.store.paused()
        return functions

    async def cancel_waiting(self, function: str, *, now: float) -> int:
        waiting = [
            record.task.id
            async for record in self.store.records()
            if record.task.function == function and record.task.status in WAITING
        ]
        cancelled = 0
        for task_id in waiting:
            try:
                await self.cancel(task_id, now=now)
            except (Conflict, NotFound):
                continue  # started or ended meanwhile
            cancelled += 1
        return cancelled

    async def purge_dead(self, function: str | None) -> int:
        """Delete dead-lettered and expired tasks (of one function, or all), payloads included; how many."""
        dead = [
            record
            async for record in self.store.records()
            if record.task.status in (TaskStatus.DEAD_LETTERED, TaskStatus.EXPIRED)
            and (function is None or record.task.function == function)
        ]
        for record in dead:
            await self.store.forget(record.task.id)
            await self.store.delete(record.stream, record.seq)
        return len(dead)

    async def redrive(self, task_id: str, *, now: float) -> Task:
        found = await self.store.record(task_id)
        if found is None:
            raise NotFound("invocation", task_id)
        record, revision = found
        task = record.task
        if task.status not in DEAD:
            state = task.status.value
            raise Conflict("invocation", task_id, f"is {state}: only dead-lettered or expired tasks are redriven")
        payload = await self.store.payload(record.stream, record.seq)
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
        subject = self.store.naming.work_subject(task.function, task.priority)
        stream, seq = await self.store.publish(
            subject, payload, message_headers(queued, msg_id=f"{task_id}.{generation}")
        )
        if not await self.store.swap(Record(queued, stream=stream, seq=seq, generation=generation), revision):
            await self.store.delete(stream, seq)
            raise Conflict("invocation", task_id, "changed while being redriven; try again")
        await self.store.delete(record.stream, record.seq)
        return replace(queued, payload=payload)


def _queue_key(message: Msg) -> QueueKey:
    headers = message.headers or {}
    return QueueKey(headers["Nest-Function"], int(headers["Nest-Priority"]))
