"""The dispatcher: pushes due tasks to their functions, fairly, within limits, and settles each attempt.

One round: read the due tasks per (function, priority) queue, hand out the free slots (each function's
`async.concurrency` minus what it runs now) one by one with `fairness.pick`, each pick also paced by the
function's AIMD rate (`aimd.pace`), lease the picked counts per queue, and run each task in its own asyncio task:
invoke (`invoking.ProxyInvoker`), then settle it or schedule its retry by `retry.next_step`. A submission or a
finished task wakes the loop at once, so an idle queue dispatches in well under a millisecond plus the database
round trip; otherwise it looks again after `idle_poll_s` (delayed tasks and retries coming due).

A task is never run twice at once: it is leased for the function's timeout plus a margin, the lease is extended
while the run lasts, and only the lease holder may settle it. A task whose lease ran out (this process died) is
taken over by the next dispatcher, counting the lost attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.asyncq import aimd
from gateway.asyncq.crashpoints import crashpoint
from gateway.asyncq.fairness import FairState, QueueKey, pick
from gateway.asyncq.retry import Failure, Next, RetryPolicy, is_expired, next_step
from gateway.asyncq.tasks import Outcome, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from gateway.asyncq.invoking import Answer
    from gateway.asyncq.tasks import Task, TaskQueue

logger = logging.getLogger("nest.asyncq")

LEASE_MARGIN_S = 30.0
READY_REFRESH_S = 0.1
READY_REFRESH_ROUNDS = 1000
"""A known backlog stands in for counting it again for at most this long and this many rounds (see `_ready`)."""
READY_DEEP = 1000
READY_REFRESH_DEEP_S = 1.0
"""A backlog of `READY_DEEP` tasks or more is counted again only this often: counting 100,000 takes ~30 ms."""
DISPATCH_RATE = aimd.AimdConfig(initial_rate=2000.0, increase=200.0)
"""AIMD's default for dispatch: the function's `async.concurrency` is what bounds a healthy function, so the
rate starts high (a no-op function drains thousands a second) and is there to back off from throttling and to
climb back; a start at 50/s growing 10/s per second held a no-op at ~80 tasks/s (tests/bench/bench_async.py)."""


@dataclass(frozen=True, slots=True)
class AsyncSettings:
    """A function's `async:` settings as the dispatcher needs them."""

    concurrency: int = 10
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_backlog: int = 100_000


class AsyncCatalog(Protocol):
    def async_settings(self, function: str) -> AsyncSettings | None:
        """The function's settings, or None when it no longer exists."""
        ...


class Invoker(Protocol):
    async def invoke(self, task: Task, *, call_id: str) -> Answer: ...


class ResultSink(Protocol):
    async def record(self, task: Task, outcome: Outcome, *, now: float) -> None:
        """Durably record what the finished task owes its callback and destinations (before it is settled)."""
        ...

    def wake(self) -> None:
        """The task is settled: send what was recorded."""
        ...


class Dispatcher:
    def __init__(
        self,
        queue: TaskQueue,
        invoker: Invoker,
        catalog: AsyncCatalog,
        *,
        owner: str,
        sink: ResultSink | None = None,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        idle_poll_s: float = 0.25,
        rate: aimd.AimdConfig | None = None,
        lease_margin_s: float = LEASE_MARGIN_S,
    ) -> None:
        self._queue = queue
        self._invoker = invoker
        self._catalog = catalog
        self._owner = owner
        self._sink = sink
        self._clock = clock
        self._draw = draw
        self._idle_poll_s = idle_poll_s
        self._rate_config = rate or DISPATCH_RATE
        self._lease_margin_s = lease_margin_s
        """A lease lasts the function's timeout plus this: how long a crashed dispatcher's tasks wait to run again."""
        self._rates: dict[str, aimd.AimdState] = {}
        self._fair = FairState()
        self._wake = asyncio.Event()
        self._stopping = False
        self.running: Counter[str] = Counter()
        """Tasks running now in their function, per function (what `async.concurrency` bounds)."""
        self.settling: Counter[str] = Counter()
        """Tasks whose function answered and whose outcome is being written: their slot is free already, so the
        next task starts while the last one's write waits for its group commit; more than `concurrency` of these
        take slots again (bounded memory when the disk is slow)."""
        self._in_function: set[str] = set()
        self._known: dict[QueueKey, int] = {}
        """Due tasks per queue at the last count, less what was leased since."""
        self._known_at = float("-inf")
        self._known_rounds = 0
        self._backlog: dict[str, int] = {}
        """Due tasks per function at the last round: AIMD's "is the backlog growing" signal."""

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Start no more tasks; `run` returns once the running ones are settled."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while not self._stopping:
                self._wake.clear()
                try:
                    started = await self.dispatch_round(group)
                except Exception:
                    logger.exception("dispatch round failed; retrying")
                    started = 0
                if not started:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._idle_poll_s):
                            await self._wake.wait()

    async def dispatch_round(self, group: asyncio.TaskGroup) -> int:
        """Lease and start what may run now; how many tasks started."""
        now = self._clock()
        ready = await self._ready(now)
        backlog: Counter[str] = Counter()
        for key, count in ready.items():
            backlog[key.function] += count
        self._backlog = dict(backlog)
        plan = self._plan(ready, now)
        started = 0
        for key, count in plan.items():
            settings = self._catalog.async_settings(key.function)
            if settings is None:
                continue
            lease_s = settings.timeout_s + self._lease_margin_s
            leased = await self._queue.lease(key, owner=self._owner, now=now, lease_s=lease_s, limit=count)
            self._known[key] = max(0, self._known.get(key, 0) - count) if len(leased) == count else 0
            for task in leased:
                self.running[task.function] += 1
                self._in_function.add(task.id)
                group.create_task(self._execute(task, settings, lease_s), name=f"task {task.id}")
                started += 1
        return started

    async def _ready(self, now: float) -> dict[QueueKey, int]:
        """Due tasks per queue. Counting them scans the backlog, so while the last count (less what was leased
        since) is fresh and deep enough to fill every free slot, it stands in for a new one; a shallow or stale one
        is counted again, so new queues, pauses and delayed tasks coming due show within `READY_REFRESH_S` (one
        second behind a deep backlog)."""
        stale_after = READY_REFRESH_DEEP_S if sum(self._known.values()) >= READY_DEEP else READY_REFRESH_S
        fresh = now - self._known_at < stale_after and self._known_rounds < READY_REFRESH_ROUNDS
        if fresh and self._known and self._fills(self._known):
            self._known_rounds += 1
            return dict(self._known)
        self._known = dict(await self._queue.ready(now))
        self._known_at, self._known_rounds = now, 0
        return dict(self._known)

    def _fills(self, known: dict[QueueKey, int]) -> bool:
        """Can the known backlog fill every function's free slots?"""
        depth: Counter[str] = Counter()
        for key, count in known.items():
            depth[key.function] += count
        for function, count in depth.items():
            settings = self._catalog.async_settings(function)
            if settings is not None and count < settings.concurrency - self.running[function]:
                return False
        return True

    def _plan(self, ready: dict[QueueKey, int], now: float) -> Counter[QueueKey]:
        left = dict(ready)
        free: dict[str, int] = {}
        for key in left:
            settings = self._catalog.async_settings(key.function)
            if settings is None:
                free[key.function] = 0
                continue
            overflow = max(0, self.settling[key.function] - settings.concurrency)
            free[key.function] = settings.concurrency - self.running[key.function] - overflow
        plan: Counter[QueueKey] = Counter()
        paced_out: set[str] = set()
        while True:
            eligible = [
                key
                for key, count in left.items()
                if count > 0 and free[key.function] > 0 and key.function not in paced_out
            ]
            chosen, self._fair = pick(self._fair, eligible)
            if chosen is None:
                return plan
            state = self._rates.get(chosen.function) or aimd.start(self._rate_config)
            allowed, self._rates[chosen.function] = aimd.pace(self._rate_config, state, now=now)
            if not allowed:
                paced_out.add(chosen.function)
                continue
            plan[chosen] += 1
            left[chosen] -= 1
            free[chosen.function] -= 1

    async def _execute(self, task: Task, settings: AsyncSettings, lease_s: float) -> None:
        try:
            await self._attempt(task, settings, lease_s)
        except Exception:
            logger.exception("task %s: settling failed; its lease will run out and it will be retried", task.id)
        finally:
            self._answered(task)
            self.settling[task.function] -= 1
            self.wake()

    def _answered(self, task: Task) -> None:
        """The task no longer runs in its function: free its slot (once), and count it as settling."""
        if task.id in self._in_function:
            self._in_function.discard(task.id)
            self.running[task.function] -= 1
            self.settling[task.function] += 1
            self.wake()

    async def _attempt(self, task: Task, settings: AsyncSettings, lease_s: float) -> None:
        now = self._clock()
        if is_expired(settings.retry, enqueued_at=task.enqueued_at, now=now):
            reason = f"max_event_age {settings.retry.max_event_age_s:g}s passed before it could run"
            self._answered(task)
            await self._settle(task, Outcome(TaskStatus.EXPIRED, error=reason))
            return
        keeper = _LeaseKeeper(self._keep_lease(task, lease_s), after_s=lease_s / 3)
        try:
            crashpoint("after_dispatch")
            answer: Answer | None = await self._invoker.invoke(task, call_id=task.id)
            crashpoint("after_result")
        except Exception as exc:
            logger.warning("task %s: invocation failed: %r", task.id, exc)
            answer = None
        finally:
            keeper.cancel()
            self._answered(task)
        if answer is not None and answer.ok:
            self._observe(task.function, succeeded=1, throttled=0)
            await self._settle(task, Outcome(TaskStatus.SUCCEEDED, answer.body, answer.status))
            return
        failure = answer.failure() if answer is not None else Failure(None, "crash")
        verdict = next_step(
            settings.retry,
            failure,
            attempts=task.attempts + 1,
            throttles=task.throttles + 1,
            enqueued_at=task.enqueued_at,
            now=self._clock(),
            jitter=self._draw(),
        )
        self._observe(task.function, succeeded=0, throttled=0 if verdict.spends_attempt else 1)
        if verdict.next is Next.RETRY and verdict.at is not None:
            await self._queue.retry(
                task.id,
                owner=self._owner,
                at=verdict.at,
                spent_attempt=verdict.spends_attempt,
                error=verdict.reason,
                now=self._clock(),
            )
            return
        status = TaskStatus.DEAD_LETTERED if verdict.next is Next.DEAD_LETTER else TaskStatus.EXPIRED
        body = answer.body if answer is not None else None
        code = answer.status if answer is not None else None
        await self._settle(task, Outcome(status, body, code, verdict.reason))

    async def _settle(self, task: Task, outcome: Outcome) -> None:
        """Record the deliveries first, then settle: a crash in between re-runs the task, never loses a record."""
        now = self._clock()
        if self._sink is not None:
            await self._sink.record(task, outcome, now=now)
        if not await self._queue.settle(task.id, owner=self._owner, outcome=outcome, now=now):
            logger.warning("task %s: lease lost before settling; another dispatcher owns it now", task.id)
            return
        if self._sink is not None:
            self._sink.wake()

    async def _keep_lease(self, task: Task, lease_s: float) -> None:
        while True:
            if not await self._queue.extend(task.id, owner=self._owner, until=self._clock() + lease_s):
                logger.warning("task %s: lease lost while running", task.id)
                return
            await asyncio.sleep(lease_s / 3)

    def _observe(self, function: str, *, succeeded: int, throttled: int) -> None:
        state = self._rates.get(function) or aimd.start(self._rate_config)
        backlog = self._backlog.get(function, 0)
        self._rates[function] = aimd.observe(
            self._rate_config, state, succeeded=succeeded, throttled=throttled, backlog=backlog, now=self._clock()
        )

    def waiting(self, function: str) -> int:
        """Due tasks of the function that its async concurrency would let start now (as of the last round)."""
        settings = self._catalog.async_settings(function)
        if settings is None:
            return 0
        free = max(0, settings.concurrency - self.running[function])
        return min(self._backlog.get(function, 0), free)

    def rate(self, function: str) -> float:
        state = self._rates.get(function)
        return state.rate if state is not None else self._rate_config.initial_rate


class _LeaseKeeper:
    """Runs `keep` (extending a lease) only if the run lasts `after_s`: most runs end long before, and a timer
    costs the event loop less than a task per run."""

    def __init__(self, keep: Coroutine[None, None, None], *, after_s: float) -> None:
        self._keep = keep
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep)

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        else:
            self._keep.close()  # never started: no "never awaited" warning
