"""The dispatcher keeps a function's slots busy: a slot frees when the function answers (not when the outcome is
written), and a known backlog stands in for counting the queue again on every round."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from gateway.asyncq.dispatcher import AsyncSettings, Dispatcher
from gateway.asyncq.invoking import Answer
from gateway.asyncq.sqlite import SqliteTaskQueue
from tests.unit.gateway.asyncq.test_dispatcher import (
    FAST_RETRIES,
    Catalog,
    FakeFunctions,
    Sink,
    run_until_done,
    submit,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from gateway.asyncq.fairness import QueueKey
    from gateway.asyncq.tasks import Outcome


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SqliteTaskQueue]:
    opened = SqliteTaskQueue(tmp_path / "tasks.db")
    await opened.open()
    yield opened
    await opened.close()


class SlowSettles:
    """The real queue, but settling waits until `release` is set, and `ready` calls are counted."""

    def __init__(self, inner: SqliteTaskQueue) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.release.set()
        self.ready_calls = 0
        self.waiting_settles = 0
        self.two_waiting = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def ready(self, now: float) -> dict[QueueKey, int]:
        self.ready_calls += 1
        return await self.inner.ready(now)

    async def settle(self, task_id: str, *, owner: str, outcome: Outcome, now: float) -> bool:
        self.waiting_settles += 1
        if self.waiting_settles >= 2:
            self.two_waiting.set()
        await self.release.wait()
        return await self.inner.settle(task_id, owner=owner, outcome=outcome, now=now)


def dispatcher(queue: SlowSettles, functions: FakeFunctions, sink: Sink, concurrency: int) -> Dispatcher:
    catalog = Catalog({"hello": AsyncSettings(concurrency=concurrency, retry=FAST_RETRIES)})
    return Dispatcher(queue, functions, catalog, owner="test", sink=sink, idle_poll_s=0.01)  # type: ignore[arg-type]


async def test_the_next_task_starts_while_the_last_outcome_is_being_written(queue: SqliteTaskQueue) -> None:
    slow = SlowSettles(queue)
    slow.release.clear()
    for n in range(3):
        await submit(queue, payload=str(n).encode())
    functions = FakeFunctions({"hello": lambda n: Answer(200, [], b"ok")})
    sink = Sink(expected=3)
    runner = asyncio.create_task(dispatcher(slow, functions, sink, concurrency=1).run())
    try:
        async with asyncio.timeout(10):
            await slow.two_waiting.wait()
        await asyncio.sleep(0.05)
        assert functions.most_running == 1, "still one at a time in the function"
        assert len(functions.calls) == 2, "settling beyond the concurrency takes slots again: the third waits"
        slow.release.set()
        async with asyncio.timeout(10):
            await sink.done.wait()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_deep_backlog_is_not_counted_on_every_round(queue: SqliteTaskQueue) -> None:
    slow = SlowSettles(queue)
    for n in range(60):
        await submit(queue, payload=str(n).encode())
    functions = FakeFunctions({"hello": lambda n: Answer(200, [], b"ok")})
    sink = Sink(expected=60)
    await run_until_done(dispatcher(slow, functions, sink, concurrency=2), sink)
    assert functions.most_running <= 2
    assert len(sink.finished_tasks) == 60
    assert slow.ready_calls < 30, f"counted the queue {slow.ready_calls} times for 60 tasks two at a time"


async def test_a_long_run_keeps_its_lease(queue: SqliteTaskQueue) -> None:
    call_id = await submit(queue)
    functions = FakeFunctions({"hello": lambda n: Answer(200, [], b"ok")}, hold=asyncio.Event())
    sink = Sink(expected=1)
    catalog = Catalog({"hello": AsyncSettings(timeout_s=0.05, retry=FAST_RETRIES)})
    dispatcher = Dispatcher(queue, functions, catalog, owner="test", sink=sink, idle_poll_s=0.01, lease_margin_s=0.05)
    runner = asyncio.create_task(dispatcher.run())
    try:
        await functions.started.wait()
        first = await queue.get(call_id)
        await asyncio.sleep(0.5)  # five times the 0.1 s lease
        later = await queue.get(call_id)
        assert first is not None
        assert later is not None
        assert first.lease_until is not None
        assert later.lease_until is not None
        assert later.lease_until > first.lease_until, "the lease was extended while the function ran"
        functions.hold.set()  # type: ignore[union-attr]
        async with asyncio.timeout(10):
            await sink.done.wait()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    done = await queue.get(call_id)
    assert done is not None
    assert (done.status.value, done.attempts) == ("succeeded", 1)
