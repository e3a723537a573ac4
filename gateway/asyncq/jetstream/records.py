"""How the JetStream queue names its streams and writes a task down: pure, no I/O.

Layout under one prefix `P` (a deployment's namespace; tests use a fresh one each):

```
stream P_Q{shard}   WorkQueue retention, one per shard (crc32(function) % shards)
  P.q.{shard}.w.{function}.{priority}   due work: one durable pull consumer per (function, priority)
  P.q.{shard}.d.{function}.{priority}   delayed work: one consumer per shard moves it to `w` when due
stream P_DLQ        P.dlq.{function}: dead-lettered / expired tasks, with their payload
KV     P_tasks      task id -> the task's state (everything but the payload) and where its message is
KV     P_idem       sha256(function, Idempotency-Key) -> {id, digest}: the 409 and the "same key" answer
KV     P_control    "paused" -> the functions whose dispatch is paused
```

A message carries the payload as its body and the submission in headers, so a task whose submitter stopped
between the publish and the state record is rebuilt from its message (`task_from_message`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from gateway.asyncq.tasks import Task, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

PREFIX_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
TASK_ID = "Nest-Task-Id"
HEADER_FUNCTION = "Nest-Function"
HEADER_PRIORITY = "Nest-Priority"
HEADER_ENQUEUED_AT = "Nest-Enqueued-At"
HEADER_NOT_BEFORE = "Nest-Not-Before"
HEADER_DIGEST = "Nest-Payload-Digest"
HEADER_REQUEST = "Nest-Request"
HEADER_CALLBACK = "Nest-Callback-Url"
HEADER_KEY = "Nest-Idempotency-Key"
HEADER_ERROR = "Nest-Error"
DEAD = frozenset({TaskStatus.DEAD_LETTERED, TaskStatus.EXPIRED, TaskStatus.FAILED})
"""Final states whose payload is kept (in the dead-letter stream) for `redrive`."""


@dataclass(frozen=True, slots=True)
class Naming:
    prefix: str
    shards: int

    def shard(self, function: str) -> int:
        return zlib.crc32(function.encode()) % self.shards

    def stream(self, shard: int) -> str:
        return f"{self.prefix}_Q{shard}"

    def stream_subjects(self, shard: int) -> str:
        return f"{self.prefix}.q.{shard}.>"

    def work_subject(self, function: str, priority: int) -> str:
        return f"{self.prefix}.q.{self.shard(function)}.w.{function}.{priority}"

    def delay_subject(self, function: str, priority: int) -> str:
        return f"{self.prefix}.q.{self.shard(function)}.d.{function}.{priority}"

    def shard_filter(self, shard: int) -> str:
        return f"{self.prefix}.q.{shard}.*.*.*"

    def work_filter(self, shard: int) -> str:
        return f"{self.prefix}.q.{shard}.w.*.*"

    def delay_filter(self, shard: int) -> str:
        return f"{self.prefix}.q.{shard}.d.>"

    def function_filter(self, function: str) -> str:
        return f"{self.prefix}.q.{self.shard(function)}.*.{function}.*"

    @property
    def dead_stream(self) -> str:
        return f"{self.prefix}_DLQ"

    def dead_subject(self, function: str) -> str:
        return f"{self.prefix}.dlq.{function}"

    def bucket(self, role: str) -> str:
        return f"{self.prefix}_{role}"


def work_consumer(function: str, priority: int) -> str:
    return f"w-{function}-{priority}"


def idempotency_record_key(function: str, key: str) -> str:
    return hashlib.sha256(f"{function}\0{key}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """A task's state as kept in `P_tasks`: the task without its payload, plus where its message lies."""

    task: Task
    stream: str | None = None
    seq: int | None = None
    generation: int = 0
    """How many times the task was published; part of the `Nats-Msg-Id` of each publish."""

    def encode(self) -> bytes:
        task = self.task
        document: dict[str, Any] = {
            field.name: getattr(task, field.name)
            for field in fields(Task)
            if field.name not in ("payload", "result", "status")
        }
        document["status"] = task.status.value
        document["result"] = base64.b64encode(task.result).decode() if task.result is not None else None
        return json.dumps(
            {"task": document, "stream": self.stream, "seq": self.seq, "generation": self.generation}
        ).encode()


def decode_record(raw: bytes) -> Record:
    document = json.loads(raw)
    fields = document["task"]
    fields["status"] = TaskStatus(fields["status"])
    result = fields.pop("result")
    task = Task(payload=b"", result=base64.b64decode(result) if result is not None else None, **fields)
    return Record(task, stream=document["stream"], seq=document["seq"], generation=document["generation"])


def message_headers(task: Task, *, msg_id: str) -> dict[str, str]:
    headers = {
        "Nats-Msg-Id": msg_id,
        TASK_ID: task.id,
        HEADER_FUNCTION: task.function,
        HEADER_PRIORITY: str(task.priority),
        HEADER_ENQUEUED_AT: repr(task.enqueued_at),
        HEADER_NOT_BEFORE: repr(task.not_before),
        HEADER_DIGEST: task.payload_digest,
        HEADER_REQUEST: json.dumps(task.request),
    }
    if task.callback_url is not None:
        headers[HEADER_CALLBACK] = task.callback_url
    if task.idempotency_key is not None:
        headers[HEADER_KEY] = task.idempotency_key
    return headers


def task_from_message(headers: Mapping[str, str], payload: bytes) -> Task:
    """The task as it was submitted, rebuilt from its message."""
    enqueued_at = float(headers[HEADER_ENQUEUED_AT])
    not_before = float(headers[HEADER_NOT_BEFORE])
    return Task(
        id=headers[TASK_ID],
        function=headers[HEADER_FUNCTION],
        status=TaskStatus.DELAYED if not_before > enqueued_at else TaskStatus.QUEUED,
        priority=int(headers[HEADER_PRIORITY]),
        payload=payload,
        payload_digest=headers[HEADER_DIGEST],
        request=json.loads(headers[HEADER_REQUEST]),
        enqueued_at=enqueued_at,
        not_before=not_before,
        idempotency_key=headers.get(HEADER_KEY),
        callback_url=headers.get(HEADER_CALLBACK),
    )
