"""The JetStream primitives the queue is built from: streams and buckets, records with compare-and-set, publish,
and pulls that never wait.

A pull asks the consumer for up to `batch` messages with `no_wait`: the server answers at once with what it
can deliver now (or "no messages"), so `lease` costs one round trip and an empty queue is not a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

import nats
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext

from gateway.asyncq.jetstream.records import PREFIX_PATTERN, Naming, Record, decode_record
from nest.contracts.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

logger = logging.getLogger(__name__)

PULL_TIMEOUT_S = 2.0
"""How long a `no_wait` pull may take to answer at all (the server answers at once unless it is in trouble)."""
SCAN_TIMEOUT_S = 10.0
"""How long a scan of the task bucket may wait for its next entry."""
PAUSED_KEY = "paused"


class JetStreamStore:
    """One connection to NATS and the streams and buckets under `prefix`."""

    def __init__(self, url: str, *, prefix: str, shards: int, duplicate_window_s: float, replicas: int) -> None:
        if not PREFIX_PATTERN.match(prefix):
            raise InvalidInput("prefix", f"{prefix!r} must be a letter then up to 31 letters, digits, '_' or '-'")
        if not 1 <= shards <= 64:
            raise InvalidInput("shards", f"{shards} is not from 1 to 64")
        self.url = url
        self.naming = Naming(prefix, shards)
        self._duplicate_window_s = duplicate_window_s
        self._replicas = replicas
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._buckets: dict[str, KeyValue] = {}

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the JetStream task queue is not open")
        return self._js

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("the JetStream task queue is not open")
        return self._nc

    async def open(self, *, connect_timeout_s: float = 5.0) -> None:
        try:
            async with asyncio.timeout(connect_timeout_s):
                self._nc = await nats.connect(
                    self.url, connect_timeout=connect_timeout_s, max_reconnect_attempts=-1, error_cb=_log_error
                )
            self._js = self._nc.jetstream()
            await self._js.account_info()
        except Exception as exc:
            await self.close()
            raise InvalidInput(
                "queue",
                f"no NATS JetStream at {self.url} ({_describe(exc)}); start nats-server with -js,"
                " or leave out --queue to keep async tasks in the embedded SQLite queue",
            ) from exc
        naming = self.naming
        for shard in range(naming.shards):
            await self._ensure_stream(
                api.StreamConfig(
                    name=naming.stream(shard),
                    subjects=[naming.stream_subjects(shard)],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    duplicate_window=self._duplicate_window_s,
                    num_replicas=self._replicas,
                )
            )
        await self._ensure_stream(
            api.StreamConfig(
                name=naming.dead_stream,
                subjects=[f"{naming.prefix}.dlq.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=self._replicas,
            )
        )
        for role in ("tasks", "idem", "control"):
            name = naming.bucket(role)
            self._buckets[role] = await self.js.create_key_value(
                api.KeyValueConfig(bucket=name, history=1, replicas=self._replicas, storage=api.StorageType.FILE)
            )

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config)  # created before with another setting we own: take ours

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            await nc.drain()

    async def destroy(self) -> None:
        """Delete every stream and bucket under the prefix (tests; `nest` never calls it)."""
        for shard in range(self.naming.shards):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_stream(self.naming.stream(shard))
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_stream(self.naming.dead_stream)
        for role in ("tasks", "idem", "control"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_key_value(self.naming.bucket(role))

    def bucket(self, role: str) -> KeyValue:
        return self._buckets[role]

    # task records

    async def record(self, task_id: str) -> tuple[Record, int] | None:
        """The task's record and its revision (for `swap`), or None."""
        try:
            entry = await self.bucket("tasks").get(task_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return decode_record(entry.value), entry.revision

    async def create(self, record: Record) -> int | None:
        """Store a new record; None if one exists already."""
        try:
            return await self.bucket("tasks").create(record.task.id, record.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def swap(self, record: Record, revision: int) -> int | None:
        """Replace the record if it is still at `revision` (compare-and-set): its new revision, or None if someone
        changed it meanwhile."""
        try:
            return await self.bucket("tasks").update(record.task.id, record.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def forget(self, task_id: str) -> None:
        await self.bucket("tasks").purge(task_id)

    async def records(self) -> AsyncIterator[Record]:
        """Every task record (a full scan: for the administrative calls only).

        The end is the entry the server says nothing follows (`delta == 0`), not nats-py's end-of-history marker,
        which can arrive before entries already on their way.
        """
        bucket = self.bucket("tasks")
        if not (await bucket.status()).values:
            return
        watcher = await bucket.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=SCAN_TIMEOUT_S)  # type: ignore[no-untyped-call]
                if entry is None:
                    continue
                if entry.operation is None and entry.value:
                    yield decode_record(entry.value)
                if entry.delta == 0:
                    return
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    # messages

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> tuple[str, int]:
        """Durably store a message (returns once the stream has it); (stream, sequence).

        The server's `max_payload` (1 MiB by default) bounds headers and body together, and a message over it
        costs the connection, so an oversized body is refused here (`PayloadTooLarge`, a 413) instead.
        """
        header_bytes = len("NATS/1.0\r\n\r\n") + sum(
            len(name.encode()) + len(value.encode()) + 4 for name, value in headers.items()
        )
        if len(payload) + header_bytes > self.nc.max_payload:
            raise PayloadTooLarge("async request body", self.nc.max_payload - header_bytes)
        ack = await self.js.publish(subject, payload, headers=headers)
        return ack.stream, ack.seq

    async def payload(self, stream: str | None, seq: int | None) -> bytes:
        if stream is None or seq is None:
            return b""
        try:
            message = await self.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return b""
        return message.data or b""

    async def delete(self, stream: str | None, seq: int | None) -> None:
        if stream is not None and seq is not None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_msg(stream, seq)

    async def ensure_consumer(
        self, shard: int, name: str, subject: str, *, ack_wait_s: float, max_deliver: int = -1
    ) -> None:
        """A durable pull consumer with explicit acks; an existing one takes the new `ack_wait` / `max_deliver`."""
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=-1,
        )
        await self.js.add_consumer(self.naming.stream(shard), config)

    async def pull(self, stream: str, consumer: str, batch: int) -> list[Msg]:
        """Up to `batch` messages the consumer can deliver now; never waits for new ones."""
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox)
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        messages: list[Msg] = []
        try:
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, reply=inbox)
            while len(messages) < batch:
                try:
                    message = await subscription.next_msg(timeout=PULL_TIMEOUT_S)
                except TimeoutError:
                    break
                if JetStreamContext.is_status_msg(message):
                    break  # 404 no messages / 408: nothing more to deliver now
                messages.append(message)
        finally:
            await subscription.unsubscribe()
        return messages

    async def consumers(self, stream: str) -> list[api.ConsumerInfo]:
        infos: list[api.ConsumerInfo] = []
        while True:
            page = await self.js.consumers_info(stream, offset=len(infos))
            infos.extend(page)
            if not page:
                return infos

    async def counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject matching `subjects` in the stream."""
        info = await self.js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    # pause

    async def paused(self) -> tuple[set[str], int | None]:
        try:
            entry = await self.bucket("control").get(PAUSED_KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return set(), None
        return set(json.loads(entry.value or b"[]")), entry.revision

    async def set_paused(self, function: str, paused: bool) -> None:
        control = self.bucket("control")
        while True:
            functions, revision = await self.paused()
            changed = functions | {function} if paused else functions - {function}
            value = json.dumps(sorted(changed)).encode()
            try:
                if revision is None:
                    await control.create(PAUSED_KEY, value)
                else:
                    await control.update(PAUSED_KEY, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another gateway changed the set meanwhile: apply ours to theirs
            return


async def _log_error(exc: Exception) -> None:
    logger.warning("NATS connection: %s: %s (reconnecting)", type(exc).__name__, exc)


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
