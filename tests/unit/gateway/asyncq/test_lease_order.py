"""Leasing merges the three kinds of due task (queued, delayed come due, lease run out) oldest first, and reads
the backlog through its index rather than sorting all of it."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import TYPE_CHECKING

from gateway.asyncq.fairness import QueueKey
from gateway.asyncq.sqlite import DUE_PARTS, SqliteTaskQueue
from gateway.asyncq.tasks import NewTask

if TYPE_CHECKING:
    from pathlib import Path

KEY = QueueKey("hello", 0)


def new_task(name: str, *, at: float, not_before: float) -> NewTask:
    payload = name.encode()
    return NewTask("hello", payload, hashlib.sha256(payload).hexdigest(), enqueued_at=at, not_before=not_before)


async def test_due_tasks_of_every_kind_are_leased_oldest_first(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    try:
        crashed = (await queue.submit(new_task("crashed", at=100.0, not_before=100.0))).task
        [taken] = await queue.lease(KEY, owner="dead", now=100.0, lease_s=5.0, limit=1)
        assert taken.id == crashed.id
        queued = (await queue.submit(new_task("queued", at=110.0, not_before=110.0))).task
        delayed = (await queue.submit(new_task("delayed", at=101.0, not_before=105.0))).task
        later = (await queue.submit(new_task("later", at=101.0, not_before=500.0))).task
        leased = await queue.lease(KEY, owner="new", now=120.0, lease_s=5.0, limit=10)
        assert [task.id for task in leased] == [crashed.id, delayed.id, queued.id]
        assert leased[0].attempts == 1, "the lost attempt of the dead dispatcher counts"
        assert later.id not in {task.id for task in leased}
        assert await queue.lease(KEY, owner="new", now=120.0, lease_s=5.0, limit=10) == []
    finally:
        await queue.close()


async def test_each_due_condition_walks_the_index(tmp_path: Path) -> None:
    queue = SqliteTaskQueue(tmp_path / "tasks.db")
    await queue.open()
    await queue.close()
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        for part in DUE_PARTS:
            query = (
                f"EXPLAIN QUERY PLAN SELECT not_before, seq FROM tasks WHERE {part} AND function = 'f'"
                " AND priority = 0 ORDER BY not_before, seq LIMIT 5"
            )
            plan = " ".join(row[3] for row in db.execute(query, {"now": 1.0}))
            assert "tasks_due" in plan, plan
            assert "TEMP B-TREE" not in plan, f"{part}: sorts instead of walking the index: {plan}"
