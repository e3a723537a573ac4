"""`GrpcMetricsSource` against real gateway metrics servers on Unix sockets (each with its own routing table)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
import pytest
from hypothesis import given, strategies as st

from autoscaler.remote import GrpcMetricsSource, aggregate
from gateway.metrics_service import SERVICE, MetricsServer, TrafficLedger
from gateway.routing import RoutingTable
from nest.api._generated import metrics_pb2
from nest.contracts.errors import Unavailable
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import Route, VersionKey, VersionTraffic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

KEY = VersionKey(FunctionName("hello"), VersionId("abc123abc123"))
OTHER = VersionKey(FunctionName("resize"), VersionId("def456def456"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    """One gateway replica: its own routing table, ledger and metrics server on a Unix socket."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.clock = clock
        self.table = RoutingTable(clock=clock)
        for key in (KEY, OTHER):
            self.table.set_route(Route(key, concurrency=10, timeout_s=30, max_body_bytes=1024))
        self.address = f"unix:{path}"
        self.server = MetricsServer(TrafficLedger(self.table), self.address, clock=clock, grace_s=0)

    def complete(self, count: int, key: VersionKey = KEY) -> None:
        traffic = self.table.gate(key).traffic
        for _ in range(count):
            traffic.started(self.clock.now)
            traffic.finished(self.clock.now)


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gateway, Clock]]:
    clock = Clock()
    first, second = Gateway(tmp_path / "gw-0.sock", clock), Gateway(tmp_path / "gw-1.sock", clock)
    await first.server.start()
    await second.server.start()
    yield first, second, clock
    await first.server.stop()
    await second.server.stop()


@pytest.fixture
async def sources() -> AsyncIterator[Callable[..., GrpcMetricsSource]]:
    made: list[GrpcMetricsSource] = []

    def make(addresses: list[str], **kwargs: object) -> GrpcMetricsSource:
        source = GrpcMetricsSource(addresses, **kwargs)  # type: ignore[arg-type]
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


def by_key(traffic: list[VersionTraffic]) -> dict[VersionKey, VersionTraffic]:
    return {item.key: item for item in traffic}


async def test_traffic_of_two_replicas_is_summed_per_version(
    gateways: tuple[Gateway, Gateway, Clock], sources: Callable[..., GrpcMetricsSource]
) -> None:
    first, second, clock = gateways
    source = sources([first.address, second.address], collector_id="autoscaler-0")
    await source.collect(clock.now)
    first.complete(3)
    second.complete(4)
    second.complete(1, key=OTHER)
    first.table.gate(KEY).traffic.started(clock.now)
    second.table.gate(KEY).traffic.enqueued(clock.now)
    clock.now += 2
    seen = by_key(await source.collect(clock.now))
    assert source.answered == 2
    hello = seen[KEY]
    assert (hello.completed, hello.in_flight, hello.queued, hello.interval_s) == (7, 1, 1, 2.0)
    assert hello.concurrency == pytest.approx(2.0)
    assert seen[OTHER].completed == 1


async def test_two_autoscalers_with_their_own_ids_both_see_all_the_traffic(
    gateways: tuple[Gateway, Gateway, Clock], sources: Callable[..., GrpcMetricsSource]
) -> None:
    first, second, clock = gateways
    leader = sources([first.address, second.address], collector_id="leader")
    standby = sources([first.address, second.address], collector_id="standby")
    await leader.collect(clock.now)
    await standby.collect(clock.now)
    first.complete(2)
    second.complete(3)
    clock.now += 1
    assert by_key(await leader.collect(clock.now))[KEY].completed == 5
    assert by_key(await standby.collect(clock.now))[KEY].completed == 5


async def test_a_restarted_autoscaler_with_the_same_id_loses_nothing(
    gateways: tuple[Gateway, Gateway, Clock], sources: Callable[..., GrpcMetricsSource]
) -> None:
    first, second, clock = gateways
    before = sources([first.address, second.address], collector_id="autoscaler-0")
    await before.collect(clock.now)
    await before.close()
    first.complete(2)
    second.complete(2)
    clock.now += 5
    after = sources([first.address, second.address], collector_id="autoscaler-0")
    resumed = by_key(await after.collect(clock.now))[KEY]
    assert (resumed.completed, resumed.interval_s) == (4, 5.0)


async def test_a_dead_replica_is_skipped_and_logged_once_until_it_answers_again(
    tmp_path: Path,
    gateways: tuple[Gateway, Gateway, Clock],
    sources: Callable[..., GrpcMetricsSource],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, _, clock = gateways
    late = Gateway(tmp_path / "gw-late.sock", clock)
    source = sources([first.address, late.address], collector_id="autoscaler-0", deadline_s=2)
    caplog.set_level(logging.INFO, logger="nest.autoscaler.remote")
    first.complete(3)
    completed = [by_key(await source.collect(clock.now))[KEY].completed for _ in range(3)]
    assert completed == [3, 0, 0]
    assert (source.answered, source.failing) == (1, {late.address})
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert late.address in caplog.records[0].getMessage()
    await late.server.start()
    try:
        for _ in range(200):  # the channel reconnects after its backoff (0.5 s at first)
            await source.collect(clock.now)
            if source.answered == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await late.server.stop()
    assert (source.answered, source.failing) == (2, set())
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


async def test_a_replica_slower_than_the_deadline_is_skipped(
    tmp_path: Path, gateways: tuple[Gateway, Gateway, Clock], sources: Callable[..., GrpcMetricsSource]
) -> None:
    first, _, clock = gateways
    stuck = asyncio.Event()

    async def never_answers(request: metrics_pb2.CollectRequest, context: object) -> metrics_pb2.CollectResponse:
        await stuck.wait()
        return metrics_pb2.CollectResponse()

    slow = await _serve(f"unix:{tmp_path}/slow.sock", never_answers)
    try:
        source = sources([first.address, f"unix:{tmp_path}/slow.sock"], deadline_s=0.2)
        first.complete(1)
        assert by_key(await source.collect(clock.now))[KEY].completed == 1
        assert source.answered == 1
    finally:
        await slow.stop(0)


async def test_a_malformed_reply_skips_that_replica_and_none_answering_is_an_error_not_zero_traffic(
    tmp_path: Path, sources: Callable[..., GrpcMetricsSource], caplog: pytest.LogCaptureFixture
) -> None:
    async def negative(request: metrics_pb2.CollectRequest, context: object) -> metrics_pb2.CollectResponse:
        bad = metrics_pb2.VersionTraffic(function="hello", version="abc", in_flight=-3, interval_s=1)
        return metrics_pb2.CollectResponse(versions=[bad])

    broken = await _serve(f"unix:{tmp_path}/broken.sock", negative)
    try:
        source = sources([f"unix:{tmp_path}/broken.sock"])
        with pytest.raises(Unavailable, match=r"no gateway replica answered the metrics call \(1 tried\)"):
            await source.collect(0.0)
        assert source.answered == 0
        assert "malformed reply: hello@abc in_flight is -3" in caplog.text
    finally:
        await broken.stop(0)


async def test_cpu_and_memory_cross_the_wire_only_where_reported(
    tmp_path: Path, sources: Callable[..., GrpcMetricsSource]
) -> None:
    async def reports(request: metrics_pb2.CollectRequest, context: object) -> metrics_pb2.CollectResponse:
        measured = metrics_pb2.VersionTraffic(function="hello", version="abc123abc123", interval_s=1, cpu=1.5)
        return metrics_pb2.CollectResponse(versions=[measured])

    replica = await _serve(f"unix:{tmp_path}/cpu.sock", reports)
    try:
        [seen] = await sources([f"unix:{tmp_path}/cpu.sock"]).collect(0.0)
    finally:
        await replica.stop(0)
    assert (seen.key, seen.cpu, seen.memory) == (KEY, 1.5, None)


def test_aggregate_sums_counts_and_takes_the_longest_interval() -> None:
    one = VersionTraffic(KEY, 1.5, 1, 0, 10, 1.0, {"qps": 10.0}, cpu=0.75)
    two = VersionTraffic(KEY, 2.5, 2, 3, 5, 1.2, {"qps": 5.0, "errors": 1.0}, memory=2e8)
    three = VersionTraffic(KEY, 0.0, 0, 0, 0, 1.1, cpu=0.5, memory=3e8)
    other = VersionTraffic(OTHER, 0.0, 0, 0, 1, 0.9)
    assert by_key(aggregate([[one, other], [two], [three]])) == {
        KEY: VersionTraffic(KEY, 4.0, 3, 3, 15, 1.2, {"qps": 15.0, "errors": 1.0}, cpu=0.75, memory=3e8),
        OTHER: other,
    }


traffic_items = st.builds(
    VersionTraffic,
    st.sampled_from([KEY, OTHER]),
    st.floats(0, 100),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 1000),
    st.floats(0, 5),
)


@given(st.lists(st.lists(traffic_items, max_size=3), max_size=5))
def test_aggregate_loses_no_count_and_ignores_the_order_of_replicas(replies: list[list[VersionTraffic]]) -> None:
    summed = by_key(aggregate(replies))
    assert by_key(aggregate(list(reversed(replies)))).keys() == summed.keys()
    for key, total in summed.items():
        items = [item for reply in replies for item in reply if item.key == key]
        assert total.completed == sum(item.completed for item in items)
        assert total.in_flight + total.queued == sum(item.in_flight + item.queued for item in items)
        assert total.interval_s == max(item.interval_s for item in items)
        assert total.concurrency == pytest.approx(sum(item.concurrency for item in items))


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        pytest.param({"addresses": []}, "at least one gateway address", id="no-address"),
        pytest.param({"addresses": ["a:1"], "collector_id": "x" * 129}, "collector_id: at most 128", id="long-id"),
        pytest.param({"addresses": ["a:1"], "deadline_s": 0}, "deadline_s: must be positive", id="zero-deadline"),
    ],
)
def test_bad_configuration_is_refused_by_name(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        GrpcMetricsSource(**kwargs)  # type: ignore[arg-type]


async def _serve(address: str, behaviour: Callable[..., object]) -> grpc.aio.Server:
    """A stand-in replica answering Collect with `behaviour` (to test what a real gateway never does)."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=metrics_pb2.CollectRequest.FromString,
        response_serializer=metrics_pb2.CollectResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Collect": handler}),))
    server.add_insecure_port(address)
    await server.start()
    return server
