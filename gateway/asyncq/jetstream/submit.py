"""Submission to the JetStream queue: claim the idempotency key, publish the payload, write the record.

The publish is the commit: once the stream has the message, the task exists (a dispatcher that finds no record
rebuilds it from the message). The key's claim comes first so that two gateways given the same key agree on one
task id; if the claimer stopped before publishing, the next submission with that key and payload publishes under
the claimed id, and `Nats-Msg-Id` (derived from the key) keeps a doubled publish from storing the task twice.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import nats.js.errors

from gateway.asyncq.crashpoints import crashpoint
from gateway.asyncq.jetstream.records import Record, idempotency_record_key, message_headers
from gateway.asyncq.tasks import Submitted, Task, TaskStatus
from nest.contracts.errors import Conflict

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.asyncq.jetstream.store import JetStreamStore
    from gateway.asyncq.tasks import NewTask


async def submit(
    store: JetStreamStore, new: NewTask, *, remember: Callable[[Record, int | None], None] | None = None
) -> Submitted:
    """Store the task; `remember` is told the record written and its revision (None if one existed already)."""
    task_id, msg_id = uuid.uuid4().hex, None
    if new.idempotency_key is not None:
        claim = idempotency_record_key(new.function, new.idempotency_key)
        first = await _claim(store, claim, task_id=task_id, new=new)
        msg_id = f"idem.{claim}.{first}"  # one per claim: a key purged and claimed again is a new message
        if first != task_id:
            found = await store.record(first)
            if found is not None:
                earlier = found[0].task
                if earlier.payload_digest != new.payload_digest:
                    raise _reused(new.idempotency_key, first)
                return Submitted(earlier, created=False)
            task_id = first  # claimed, then its submitter stopped before storing it: store it now
    task = Task(
        id=task_id,
        function=new.function,
        status=TaskStatus.DELAYED if new.not_before > new.enqueued_at else TaskStatus.QUEUED,
        priority=new.priority,
        payload=new.payload,
        payload_digest=new.payload_digest,
        request=dict(new.request),
        enqueued_at=new.enqueued_at,
        not_before=new.not_before,
        idempotency_key=new.idempotency_key,
        callback_url=new.callback_url,
    )
    naming = store.naming
    subject = (naming.delay_subject if task.status is TaskStatus.DELAYED else naming.work_subject)(
        task.function, task.priority
    )
    headers = message_headers(task, msg_id=msg_id or f"{task_id}.0")
    crashpoint("before_persist")  # the publish is the commit
    stream, seq = await store.publish(subject, new.payload, headers)
    record = Record(replace(task, payload=b""), stream=stream, seq=seq)
    revision = await store.create(record)
    if remember is not None:
        remember(record, revision)
    return Submitted(task, created=True)


async def _claim(store: JetStreamStore, claim: str, *, task_id: str, new: NewTask) -> str:
    """The task id the key belongs to: ours if we claimed it first; raise `Conflict` for another payload."""
    bucket = store.bucket("idem")
    try:
        await bucket.create(claim, json.dumps({"id": task_id, "digest": new.payload_digest}).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        entry = await bucket.get(claim)
        first = json.loads(entry.value or b"{}")
        if first.get("digest") != new.payload_digest:
            raise _reused(str(new.idempotency_key), str(first.get("id"))) from None
        return str(first["id"])
    return task_id


def _reused(key: str, first_id: str) -> Conflict:
    return Conflict(
        "idempotency key", key, f"already used for invocation {first_id} with a different payload; use a new key"
    )
