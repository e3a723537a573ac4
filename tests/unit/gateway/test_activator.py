from __future__ import annotations

import asyncio

import pytest

from gateway.activator import VersionGate
from nest.contracts.errors import BufferFull, DeadlineExceeded, FunctionInitFailed
from nest.contracts.ids import FunctionName, InstanceId, VersionId
from nest.contracts.model import InitFailure, InstanceAddress, VersionKey
from tests.fakes.demand import FakeDemandSignal

KEY = VersionKey(FunctionName("hello"), VersionId("abc123abc123"))


def address(n: int, concurrency: int = 1) -> InstanceAddress:
    return InstanceAddress(InstanceId(f"hello-{n}"), KEY, f"/tmp/hello-{n}.sock", concurrency)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_gate(buffer_size: int = 10) -> tuple[VersionGate, FakeDemandSignal, Clock]:
    demand, clock = FakeDemandSignal(), Clock()
    return VersionGate(KEY, buffer_size=buffer_size, on_demand=demand.poke, clock=clock), demand, clock


async def test_a_request_takes_a_free_slot_at_once_without_poking_the_scaler() -> None:
    gate, demand, _ = make_gate()
    gate.set_endpoints([address(1, concurrency=2)])
    endpoint = await gate.acquire(timeout_s=1)
    assert endpoint.in_flight == 1
    assert demand.pokes == []
    gate.release(endpoint)
    assert endpoint.in_flight == 0
    assert gate.traffic.completed == 1


async def test_least_in_flight_instance_is_chosen() -> None:
    gate, _, _ = make_gate()
    gate.set_endpoints([address(1, concurrency=3), address(2, concurrency=3)])
    first = gate.try_acquire()
    second = gate.try_acquire()
    assert first is not None
    assert second is not None
    assert first is not second


async def test_a_request_with_no_instance_waits_pokes_and_goes_out_when_one_is_ready() -> None:
    gate, demand, _ = make_gate()
    waiting = asyncio.create_task(gate.acquire(timeout_s=5))
    await asyncio.sleep(0)
    assert demand.pokes == [KEY]
    assert gate.waiting == 1
    gate.set_endpoints([address(1)])
    endpoint = await waiting
    assert endpoint.address.instance_id == "hello-1"
    assert gate.waiting == 0
    assert gate.traffic.in_flight == 1


async def test_each_poke_says_how_many_requests_wait() -> None:
    gate, demand, _ = make_gate()
    waiters = [asyncio.create_task(gate.acquire(timeout_s=5)) for _ in range(3)]
    await asyncio.sleep(0)
    assert demand.waiting == [1, 2, 3]
    gate.set_endpoints([address(1, concurrency=3)])
    await asyncio.gather(*waiters)


async def test_a_released_slot_goes_to_the_oldest_waiter_first() -> None:
    gate, _, _ = make_gate()
    gate.set_endpoints([address(1, concurrency=1)])
    held = gate.try_acquire()
    assert held is not None
    first = asyncio.create_task(gate.acquire(timeout_s=5))
    await asyncio.sleep(0)
    second = asyncio.create_task(gate.acquire(timeout_s=5))
    await asyncio.sleep(0)
    gate.release(held)
    assert (await first) is held
    assert not second.done()
    gate.release(held)
    assert (await second) is held


async def test_a_full_buffer_is_refused_with_a_reason() -> None:
    gate, _, _ = make_gate(buffer_size=1)
    waiting = asyncio.create_task(gate.acquire(timeout_s=5))
    await asyncio.sleep(0)
    with pytest.raises(BufferFull, match="buffer limit 1"):
        await gate.acquire(timeout_s=5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiting == 0


async def test_the_deadline_gives_a_504_error_that_says_why() -> None:
    gate, _, _ = make_gate()
    with pytest.raises(DeadlineExceeded, match="no instance became ready"):
        await gate.acquire(timeout_s=0.01)
    assert gate.waiting == 0
    assert gate.idle()


async def test_an_init_failure_fails_waiting_requests_at_once_and_new_ones_fast() -> None:
    gate, demand, clock = make_gate()
    waiting = asyncio.create_task(gate.acquire(timeout_s=30))
    await asyncio.sleep(0)
    gate.fail(InitFailure(KEY, "ModuleNotFoundError", "No module named 'nope'", at=clock.now))
    with pytest.raises(FunctionInitFailed, match="No module named 'nope'"):
        await waiting
    with pytest.raises(FunctionInitFailed):
        await gate.acquire(timeout_s=30)
    assert demand.pokes == [KEY, KEY]  # still asking, so the controller retries with its backoff
    gate.set_endpoints([address(1)])
    assert gate.failure is None


async def test_a_cancelled_waiter_frees_its_buffer_place() -> None:
    gate, _, _ = make_gate()
    waiting = asyncio.create_task(gate.acquire(timeout_s=30))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiting == 0
    gate.set_endpoints([address(1)])
    assert gate.endpoints[0].in_flight == 0


async def test_removed_instances_drain_and_take_no_new_requests() -> None:
    gate, _, _ = make_gate()
    gate.set_endpoints([address(1, concurrency=2)])
    held = gate.try_acquire()
    assert held is not None
    gate.set_endpoints([])
    assert held.routable is False
    assert gate.try_acquire() is None
    gate.release(held)
    assert gate.idle()


async def test_concurrency_is_time_weighted() -> None:
    gate, _, clock = make_gate()
    gate.set_endpoints([address(1, concurrency=2)])
    gate.traffic.collect(clock.now)
    endpoint = gate.try_acquire()
    assert endpoint is not None
    clock.now += 0.5
    gate.release(endpoint)
    clock.now += 0.5
    mean, interval, completed = gate.traffic.collect(clock.now)
    assert (mean, interval, completed) == (0.5, 1.0, 1)
