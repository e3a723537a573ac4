"""The dispatcher against a real SQLite queue and a fake function (the invoker port)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from gateway.asyncq.dispatcher import AsyncSettings, Dispatcher
from gateway.asyncq.invoking import Answer
from gateway.asyncq.retry import RetryPolicy
from gateway.asyncq.sqlite import SqliteTaskQueue
from gateway.asyncq.tasks import NewTask, Outcome, Task, TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

FAST_RETRIES = RetryPolicy(
    max_retries=2, base_delay_s=0.01, max_delay_s=0.02, throttle_base_s=0.01, throttle_max_s=0.02
)


def error(status: int, error_type: str) -> Answer:
    body = json.dumps({"error": "function_error", "type": error_type, "reason": "boom"}).encode()
    return Answer(status, [(b"content-type", b"application/json")], body)


@dataclass
class FakeFunctions:
    """Answers per function from a script: a callable of the attempt number (1-based) per task."""

    scripts: dict[str, Callable[[int], Answer]]
    hold: asyncio.Event | None = None
    calls: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def invoke(self, task: Task, *, call_id: str) -> Answer:
        self.calls[task.id] += 1
        self.order.append(task.function)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(0)
            return self.scripts[task.function](self.calls[task.id])
        finally:
            self.running -= 1


@dataclass
class Catalog:
    settings: dict[str, AsyncSettings]

    def async_settings(self, function: str) -> AsyncSettings | None:
        return self.settings.get(function)


@dataclass
class Sink:
    finished_tasks: dict[str, Outcome] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 1

    async def record(self, task: Task, outcome: Outcome, *, now: float) -> None:
        self.finished_tasks[task.id] = outcome

    def wake(self) -> None:
        if len(self.finished_tasks) >= self.expected:
            self.done.set()


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SqliteTaskQueue]:
    opened = SqliteTaskQueue(tmp_path / "tasks.db")
    await opened.open()
    yield opened
    await opened.close()


async def submit(queue: SqliteTaskQueue, function: str = "hello", *, payload: bytes = b"{}", age_s: float = 0.0) -> str:
    now = time.time() - age_s
    new = NewTask(function, payload, hashlib.sha256(payload).hexdigest(), enqueued_at=now, not_before=now)
    return (await queue.submit(new)).task.id


async def run_until_done(dispatcher: Dispatcher, sink: Sink) -> None:
    runner = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            await sink.done.wait()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


def dispatcher_for(
    queue: SqliteTaskQueue, functions: FakeFunctions, sink: Sink, **settings: AsyncSettings
) -> Dispatcher:
    catalog = Catalog(settings or {"hello": AsyncSettings(retry=FAST_RETRIES)})
    return Dispatcher(queue, functions, catalog, owner="test", sink=sink, draw=lambda: 0.5, idle_poll_s=0.01)


async def test_a_task_runs_once_and_its_result_is_kept(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue, payload=b'{"n": 1}')
    functions = FakeFunctions({"hello": lambda attempt: Answer(200, [], b'{"ok": true}')})
    sink = Sink()
    await run_until_done(dispatcher_for(queue, functions, sink), sink)
    done = await queue.get(task_id)
    assert done is not None
    assert (done.status, done.attempts, done.result, done.result_status) == (
        TaskStatus.SUCCEEDED,
        1,
        b'{"ok": true}',
        200,
    )
    assert functions.calls[task_id] == 1


async def test_a_retryable_error_is_retried_until_it_succeeds(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue)
    functions = FakeFunctions({"hello": lambda n: error(500, "ValueError") if n < 3 else Answer(200, [], b"ok")})
    sink = Sink()
    await run_until_done(dispatcher_for(queue, functions, sink), sink)
    done = await queue.get(task_id)
    assert done is not None
    assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 3)


async def test_retries_exhausted_dead_letter_the_task_with_the_last_error(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue)
    functions = FakeFunctions({"hello": lambda n: error(500, "ValueError")})
    sink = Sink()
    await run_until_done(dispatcher_for(queue, functions, sink), sink)
    done = await queue.get(task_id)
    assert done is not None
    assert (done.status, done.attempts) == (TaskStatus.DEAD_LETTERED, 3)
    assert done.error == "retries exhausted: 3 attempts (max_retries 2); last: ValueError (HTTP 500)"


async def test_a_non_retryable_error_dead_letters_at_once(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue)
    functions = FakeFunctions({"hello": lambda n: error(500, "NonRetryable")})
    sink = Sink()
    await run_until_done(dispatcher_for(queue, functions, sink), sink)
    assert functions.calls[task_id] == 1
    assert sink.finished_tasks[task_id].status is TaskStatus.DEAD_LETTERED


async def test_throttles_back_off_without_spending_attempts(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue)
    functions = FakeFunctions({"hello": lambda n: Answer(429, [], b"") if n <= 5 else Answer(200, [], b"ok")})
    sink = Sink()
    await run_until_done(dispatcher_for(queue, functions, sink), sink)
    done = await queue.get(task_id)
    assert done is not None
    assert (done.status, done.attempts, done.throttles) == (TaskStatus.SUCCEEDED, 1, 5)


async def test_a_task_older_than_its_maximum_age_expires_without_running(queue: SqliteTaskQueue) -> None:
    task_id = await submit(queue, age_s=120.0)
    functions = FakeFunctions({"hello": lambda n: Answer(200, [], b"ok")})
    sink = Sink()
    settings = AsyncSettings(retry=RetryPolicy(max_event_age_s=60.0))
    await run_until_done(dispatcher_for(queue, functions, sink, hello=settings), sink)
    assert functions.calls[task_id] == 0
    assert sink.finished_tasks[task_id].status is TaskStatus.EXPIRED


async def test_a_function_never_runs_more_tasks_than_its_async_concurrency(queue: SqliteTaskQueue) -> None:
    for n in range(12):
        await submit(queue, payload=str(n).encode())
    functions = FakeFunctions({"hello": lambda n: Answer(200, [], b"ok")}, hold=asyncio.Event())
    sink = Sink(expected=12)
    settings = AsyncSettings(concurrency=3, retry=FAST_RETRIES)
    runner = asyncio.create_task(dispatcher_for(queue, functions, sink, hello=settings).run())
    try:
        async with asyncio.timeout(5):
            while functions.running < 3:
                functions.started.clear()
                await functions.started.wait()
        for _ in range(5):  # several more rounds: none may start a fourth
            await asyncio.sleep(0.02)
        assert functions.running == 3
        assert functions.hold is not None
        functions.hold.set()
        async with asyncio.timeout(10):
            await sink.done.wait()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert functions.most_running == 3
    assert len(sink.finished_tasks) == 12


async def test_one_functions_backlog_does_not_stall_another(queue: SqliteTaskQueue) -> None:
    for n in range(60):
        await submit(queue, "busy", payload=str(n).encode())
    for n in range(3):
        await submit(queue, "quiet", payload=str(n).encode())
    functions = FakeFunctions({name: (lambda n: Answer(200, [], b"ok")) for name in ("busy", "quiet")})
    sink = Sink(expected=63)
    settings = AsyncSettings(concurrency=1, retry=FAST_RETRIES)
    await run_until_done(dispatcher_for(queue, functions, sink, busy=settings, quiet=settings), sink)
    last_quiet = max(index for index, name in enumerate(functions.order) if name == "quiet")
    assert last_quiet < 10, f"quiet's tasks ran at {last_quiet}, behind busy's backlog"
