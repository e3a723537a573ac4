"""`HandlerThreads`: the sync handler's threads, as the executor they replace behaved."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.server import HandlerThreads


def test_results_and_exceptions_reach_the_loop() -> None:
    threads = HandlerThreads(2)

    def fails() -> None:
        raise ValueError("from the handler")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await threads.run(loop, lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="from the handler"):
            await threads.run(loop, fails)
        assert await threads.run(loop, threading.current_thread) is not threading.current_thread()

    asyncio.run(main())
    threads.close(wait=True)


def test_threads_start_as_needed_up_to_the_size_and_an_idle_one_is_reused() -> None:
    threads = HandlerThreads(2, name="reuse-test")
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await threads.run(loop, lambda: None)
        await threads.run(loop, lambda: None)
        assert threads.started == 1, "the idle thread took the second job"
        blocked = [threads.run(loop, release.wait) for _ in range(3)]  # two run at once, the third queues
        assert threads.started == 2
        release.set()
        assert await asyncio.gather(*blocked) == [True, True, True]

    asyncio.run(main())
    threads.close(wait=True)
    assert not any(thread.name.startswith("reuse-test_") for thread in threading.enumerate()), "stopped"


def test_a_job_past_its_timeout_keeps_its_thread_and_the_next_one_waits_for_a_free_thread() -> None:
    threads = HandlerThreads(1)
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await threads.run(loop, release.wait)
        later = threads.run(loop, lambda: "ran")
        await asyncio.sleep(0)
        assert not later.done(), "the only thread is still busy with the abandoned job"
        release.set()
        assert await later == "ran"

    asyncio.run(main())
    threads.close(wait=True)


def test_close_cancels_the_jobs_not_started_and_refuses_new_ones() -> None:
    threads = HandlerThreads(1)
    release, ran = threading.Event(), []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        running = threads.run(loop, release.wait)
        queued = threads.run(loop, lambda: ran.append("queued"))
        threads.close()
        release.set()
        assert await running is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="closed"):
            threads.run(loop, lambda: None)

    asyncio.run(main())
    threads.close(wait=True)
    assert ran == []


def test_a_result_for_a_closed_loop_is_dropped_quietly() -> None:
    threads = HandlerThreads(1)
    release, finished = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()
    threads.run(loop, lambda: (release.wait(), finished.set()))
    loop.close()
    release.set()
    assert finished.wait(5)
    threads.close(wait=True)


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least one"):
        HandlerThreads(0)
