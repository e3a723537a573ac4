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
  grows when its dispatcher vanished; a task delivered `max_deliver` times without an outcome (it took down
  `max_deliver - 1` dispatchers) is dead-lettered instead of run again.
- **Dead letters** keep their payload in the `P_DLQ` stream (subject per function) until redriven or purged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.jetstream import admin
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

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from gateway.asyncq.tasks import NewTask, Outcome, Submitted, Task

logger = logging.getLogger(__name__)

DELAY_CONSUMER = "delay"
PROMOTE_BATCH = 256
RECENT_MAX = 5_000
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
        self._held: dict[str, _Held] = {}
        """The tasks this process holds the lease of: their message (to ack or mark in progress) and record."""
        self._ack_waits: dict[QueueKey, float] = {}
        self._recent: OrderedDict[str, tuple[Record, int]] = OrderedDict()
        """Records (and revisions) of waiting tasks this process wrote lately, oldest first."""
        self._shards = range(self.store.naming.shards)
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
        for shard in range(self.store.naming.shards):
            await self.store.ensure_consumer(
                shard, DELAY_CONSUMER, self.store.naming.delay_filter(shard), ack_wait_s=30
            )

    async def close(self) -> None:
        self._held.clear()
        await self.store.close()

    async def destroy(self) -> None:
        await self.store.destroy()

    async def submit(self, new: NewTask) -> Submitted:
        return await submit(self.store, new, remember=self._remember)

    # dispatch

    async def ready(self, now: float) -> dict[QueueKey, int]:
        """Due tasks per queue: the messages on the work subjects, after moving due delayed tasks there.

        With WorkQueue retention a message stays until acked, so this is the consumer's pending count plus its
        ack-pending count (and no consumer is needed yet). A delivered message counts unless this process holds
        its lease: it is another dispatcher's running task or one whose dispatcher died (due again after
        `ack_wait`); leasing it then finds nothing or takes it over.
        """
        async with asyncio.TaskGroup() as group:  # one round trip's wait for all of them
            paused_task = group.create_task(self.store.paused())
            shard_tasks = [group.create_task(self._shard_counts(shard, now)) for shard in self._shards]
        paused, _ = paused_task.result()
        held: dict[QueueKey, int] = {}
        for holding in self._held.values():
            key = QueueKey(holding.record.task.function, holding.record.task.priority)
            held[key] = held.get(key, 0) + 1
        ready: dict[QueueKey, int] = {}
        for shard_task in shard_tasks:
            for key, messages in shard_task.result().items():
                count = messages - held.get(key, 0)
                if key.function not in paused and count > 0:
                    ready[key] = count
        return ready

    async def _shard_counts(self, shard: int, now: float) -> dict[QueueKey, int]:
        """Messages per work subject of the shard, after moving its due delayed tasks (if it has any) there."""
        naming = self.store.naming
        counts = await self.store.counts(naming.stream(shard), naming.shard_filter(shard))
        if any(subject.split(".")[3] == "d" for subject in counts):
            await self._promote(shard, now)
            counts = await self.store.counts(naming.stream(shard), naming.work_filter(shard))
        else:
            self._promoted[shard] = now  # nothing delayed: this round's leases need not look
        work: dict[QueueKey, int] = {}
        for subject, messages in counts.items():
            _, _, _, kind, function, priority = subject.split(".")
            if kind == "w":
                work[QueueKey(function, int(priority))] = messages
        return work

    async def _promote(self, shard: int, now: float) -> None:
        if self._promoted.get(shard) == now:
            return
        self._promoted[shard] = now
        stream = self.store.naming.stream(shard)
        messages = await self.store.pull(stream, DELAY_CONSUMER, PROMOTE_BATCH)
        await asyncio.gather(*(self._move_when_due(message, now) for message in messages))

    async def _move_when_due(self, message: Msg, now: float) -> None:
        record, revision = await self._record_of(message)
        task = record.task
        if task.status in FINAL or (record.seq is not None and record.seq != message.metadata.sequence.stream):
            await message.term()  # cancelled, or a stale copy of a task that moved on
            return
        if task.not_before > now:
            await message.nak(delay=task.not_before - now)
            return
        generation = record.generation + 1
        subject = self.store.naming.work_subject(task.function, task.priority)
        headers = message_headers(task, msg_id=f"{task.id}.{generation}")
        to_stream, seq = await self.store.publish(subject, message.data, headers)
        moved = replace(record, stream=to_stream, seq=seq, generation=generation)
        moved_revision = await self.store.swap(moved, revision)
        if moved_revision is not None:
            self._remember(moved, moved_revision)
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
            subject = naming.work_subject(key.function, key.priority)
            await self.store.ensure_consumer(
                shard, consumer, subject, ack_wait_s=lease_s, max_deliver=self._max_deliver
            )
            self._ack_waits[key] = lease_s
        messages = await self.store.pull(stream, consumer, limit)
        taken = await asyncio.gather(
            *(self._take(message, owner=owner, now=now, lease_s=lease_s) for message in messages)
        )
        leased = [task for task in taken if task is not None]
        return sorted(leased, key=lambda task: (task.not_before, task.enqueued_at))

    async def _take(self, message: Msg, *, owner: str, now: float, lease_s: float) -> Task | None:
        seq = message.metadata.sequence.stream
        recent = self._recent.pop((message.headers or {})[TASK_ID], None)
        if recent is not None:  # written here since: try it without reading (a stale one fails the swap)
            record, revision = recent
            task = record.task
            if task.status in WAITING and task.not_before <= now and record.seq == seq:
                taken = await self._lease_record(message, record, revision, owner=owner, now=now, lease_s=lease_s)
                if taken is not None:
                    return taken
        record, revision = await self._record_of(message)
        task = record.task
        if task.status in FINAL or (record.seq is not None and record.seq != seq):
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
        taken = await self._lease_record(message, record, revision, owner=owner, now=now, lease_s=lease_s)
        if taken is None:
            await message.nak()  # changed meanwhile (cancelled, or another dispatcher took it): decide again
        return taken

    async def _lease_record(
        self, message: Msg, record: Record, revision: int, *, owner: str, now: float, lease_s: float
    ) -> Task | None:
        task = record.task
        lost = task.status is TaskStatus.RUNNING
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
        leased = replace(record, task=taken)
        new_revision = await self.store.swap(leased, revision)
        if new_revision is None:
            return None
        self._held[task.id] = _Held(leased, new_revision, message)
        return replace(taken, payload=message.data)

    def _remember(self, record: Record, revision: int | None) -> None:
        """Keep a record this process wrote for a waiting task, so that leasing it here needs no read."""
        if revision is None:
            return
        self._recent[record.task.id] = (record, revision)
        if len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)

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
        if await self.store.swap(dead, revision) is not None:
            await message.term()

    async def _bury(self, record: Record, payload: bytes) -> Record:
        """Keep a dead task's payload in the dead-letter stream; the record then points there."""
        task = record.task
        headers = message_headers(task, msg_id=f"{task.id}.dlq.{record.generation}")
        if task.error:
            headers["Nest-Error"] = task.error[:1024].replace("\r", " ").replace("\n", " ")
        stream, seq = await self.store.publish(self.store.naming.dead_subject(task.function), payload, headers)
        return replace(record, stream=stream, seq=seq)

    async def _holding(self, task_id: str, owner: str) -> _Held | None:
        """The task if `owner` holds its lease: from memory when leased here (only a take-over changes a running
        task's record, and then the compare-and-set fails), else read."""
        held = self._held.get(task_id)
        if held is not None:
            return held if held.record.task.lease_owner == owner else None
        found = await self.store.record(task_id)
        if found is None:
            return None
        record, revision = found
        if record.task.status is not TaskStatus.RUNNING or record.task.lease_owner != owner:
            return None
        return _Held(record, revision, None)

    async def extend(self, task_id: str, *, owner: str, until: float) -> bool:
        held = await self._holding(task_id, owner)
        if held is None:
            return False
        record = replace(held.record, task=replace(held.record.task, lease_until=until))
        revision = await self.store.swap(record, held.revision)
        if revision is None:
            self._held.pop(task_id, None)  # taken over
            return False
        if held.message is not None:
            self._held[task_id] = _Held(record, revision, held.message)
            await held.message.in_progress()  # JetStream's ack_wait starts again
        return True

    async def settle(self, task_id: str, *, owner: str, outcome: Outcome, now: float) -> bool:
        held = await self._holding(task_id, owner)
        if held is None:
            return False
        record = held.record
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
        settled = replace(record, task=done, stream=None, seq=None)
        if outcome.status in DEAD:
            settled = await self._bury(settled, await self._payload(held))
        return await self._replace(held, settled)

    async def _payload(self, held: _Held) -> bytes:
        if held.message is not None:
            return held.message.data
        return await self.store.payload(held.record.stream, held.record.seq)

    async def _replace(self, held: _Held, record: Record) -> bool:
        """Write the task's next record and let go of its message: ack it (WorkQueue retention deletes it), or
        delete it when another process received it. False if the lease was lost meanwhile."""
        task_id = record.task.id
        self._held.pop(task_id, None)
        revision = await self.store.swap(record, held.revision)
        if revision is None:
            if (record.stream, record.seq) != (held.record.stream, held.record.seq):
                await self.store.delete(record.stream, record.seq)  # the copy published for the next run
            return False
        if record.task.status in WAITING:
            self._remember(record, revision)
        if held.message is not None:
            await held.message.ack()  # a lost ack only brings the message back, and a settled task is dropped
        else:
            await self.store.delete(held.record.stream, held.record.seq)
        return True

    async def retry(self, task_id: str, *, owner: str, at: float, spent_attempt: bool, error: str, now: float) -> bool:
        held = await self._holding(task_id, owner)
        if held is None:
            return False
        task = held.record.task
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
        generation = held.record.generation + 1
        naming = self.store.naming
        subject = (naming.delay_subject if at > now else naming.work_subject)(task.function, task.priority)
        headers = message_headers(again, msg_id=f"{task_id}.{generation}")
        stream, seq = await self.store.publish(subject, await self._payload(held), headers)
        return await self._replace(held, Record(again, stream=stream, seq=seq, generation=generation))

    # administration (`admin`)

    async def get(self, task_id: str) -> Task | None:
        return await admin.get(self.store, task_id)

    async def cancel(self, task_id: str, *, now: float) -> Task:
        return await admin.cancel(self.store, task_id, now=now)

    async def list_tasks(self, *, function: str | None, status: TaskStatus | None, limit: int) -> list[Task]:
        return await admin.list_tasks(self.store, function=function, status=status, limit=limit)

    async def set_paused(self, function: str, paused: bool) -> None:
        await self.store.set_paused(function, paused)

    async def paused(self) -> set[str]:
        functions, _ = await self.store.paused()
        return functions

    async def cancel_waiting(self, function: str, *, now: float) -> int:
        return await admin.cancel_waiting(self.store, function, now=now)

    async def purge_dead(self, function: str | None) -> int:
        return await admin.purge_dead(self.store, function)

    async def redrive(self, task_id: str, *, now: float) -> Task:
        return await admin.redrive(self.store, task_id, now=now)


@dataclass(frozen=True, slots=True)
class _Held:
    record: Record
    revision: int
    message: Msg | None
    """None when the lease was taken in another process (or before a restart): the message is deleted instead."""
