"""Group commit covers the dispatcher's writes too: leases, settles and retries waiting together share a commit."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.sqlite import SqliteTaskQueue
from gateway.asyncq.tasks import NewTask, Outcome, TaskStatus

if TYPE_CHECKING:
    from pathlib import Path

KEY = QueueKey("hello", 0)


def new_task(n: int) -> NewTask:
    payload = str(n).encode()
    return NewTask("hello", payload, hashlib.sha256(payload).hexdigest(), enqueued_at=100.0, not_before=100.0)


async def test_settles_and_submissions_waiting_together_share_commits(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    try:
        await asyncio.gather(*(queue.submit(new_task(n)) for n in range(200)))
        leased = await queue.lease(KEY, owner="a", now=101.0, lease_s=30.0, limit=200)
        before = queue.groups_committed
        done = Outcome(TaskStatus.SUCCEEDED, b"ok", 200)
        answers = await asyncio.gather(
            *(queue.settle(task.id, owner="a", outcome=done, now=102.0) for task in leased[:150]),
            *(
                queue.retry(task.id, owner="a", at=200.0, spent_attempt=True, error="e", now=102.0)
                for task in leased[150:]
            ),
            *(queue.submit(new_task(n)) for n in range(200, 250)),
            queue.settle(leased[0].id, owner="b", outcome=done, now=102.0),
        )
        assert all(answers[:200]), "every holder settled or rescheduled its own task"
        assert answers[-1] is False, "a non-holder cannot settle, even inside a shared group"
        assert queue.groups_committed - before < 251 / 4
        assert {(await queue.get(task.id)).status for task in leased[:150]} == {TaskStatus.SUCCEEDED}  # type: ignore[union-attr]
        assert {(await queue.get(task.id)).status for task in leased[150:]} == {TaskStatus.DELAYED}  # type: ignore[union-attr]
        assert await queue.backlog("hello") == 50 + 50
    finally:
        await queue.close()


async def test_only_the_lease_holder_extends_a_lease_written_in_a_group(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    try:
        submitted = await queue.submit(new_task(1))
        assert await queue.extend(submitted.task.id, owner="nobody", until=500.0) is False
        leased = await queue.lease(KEY, owner="a", now=101.0, lease_s=30.0, limit=5)
        assert [task.id for task in leased] == [submitted.task.id]
        assert await queue.extend(submitted.task.id, owner="a", until=500.0) is True
    finally:
        await queue.close()


async def test_only_groups_with_a_submission_wait_for_the_disk(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    try:
        submitted = await queue.submit(new_task(1))
        assert queue.synchronous == "FULL"
        await queue.lease(KEY, owner="a", now=101.0, lease_s=30.0, limit=1)
        assert queue.synchronous == "NORMAL", "the dispatcher's bookkeeping is written to the WAL, not fsynced"
        await asyncio.gather(
            queue.settle(submitted.task.id, owner="a", outcome=Outcome(TaskStatus.SUCCEEDED), now=102.0),
            queue.submit(new_task(2)),
        )
        assert queue.synchronous == "FULL", "a group holding a submission is fsynced whole"
    finally:
        await queue.close()
