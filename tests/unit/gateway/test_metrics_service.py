from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from hypothesis import given, strategies as st

from gateway.metrics_service import LOCAL_COLLECTOR, SERVICE, MetricsServer, TrafficLedger
from gateway.routing import RoutingTable
from nest.api._generated import metrics_pb2
from nest.contracts.errors import InvalidInput, Unavailable
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import Route, VersionKey, VersionTraffic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parents[3]
KEY = VersionKey(FunctionName("hello"), VersionId("abc123abc123"))
OTHER = VersionKey(FunctionName("resize"), VersionId("def456def456"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_table(clock: Clock, *keys: VersionKey) -> RoutingTable:
    table = RoutingTable(clock=clock)
    for key in keys or (KEY,):
        table.set_route(Route(key, concurrency=10, timeout_s=30, max_body_bytes=1024))
    return table


def complete(table: RoutingTable, clock: Clock, count: int = 1, key: VersionKey = KEY) -> None:
    traffic = table.gate(key).traffic
    for _ in range(count):
        traffic.started(clock.now)
        traffic.finished(clock.now)


def by_key(traffic: list[VersionTraffic]) -> dict[VersionKey, VersionTraffic]:
    return {item.key: item for item in traffic}


def test_two_collectors_each_see_every_completion() -> None:
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    ledger.collect_for("a", clock.now)
    ledger.collect_for("b", clock.now)
    complete(table, clock, 3)
    clock.now += 1
    assert by_key(ledger.collect_for("a", clock.now))[KEY].completed == 3
    complete(table, clock, 2)
    clock.now += 1
    assert by_key(ledger.collect_for("a", clock.now))[KEY].completed == 2
    seen_by_b = by_key(ledger.collect_for("b", clock.now))[KEY]
    assert (seen_by_b.completed, seen_by_b.interval_s) == (5, 2.0)


def test_concurrency_is_time_weighted_over_each_collectors_own_interval() -> None:
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    ledger.collect_for("fast", clock.now)
    ledger.collect_for("slow", clock.now)
    traffic = table.gate(KEY).traffic
    traffic.started(clock.now)
    clock.now += 1
    assert by_key(ledger.collect_for("fast", clock.now))[KEY].concurrency == pytest.approx(1.0)
    clock.now += 1
    traffic.finished(clock.now)
    clock.now += 2
    fast = by_key(ledger.collect_for("fast", clock.now))[KEY]
    assert fast.concurrency == pytest.approx(1 / 3)
    slow = by_key(ledger.collect_for("slow", clock.now))[KEY]
    assert (slow.concurrency, slow.interval_s, slow.in_flight) == (pytest.approx(0.5), 4.0, 0)


def test_a_new_collector_starts_at_the_previous_read_by_anyone() -> None:
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    complete(table, clock, 4)
    clock.now += 3
    first = by_key(ledger.collect(clock.now))[KEY]
    assert (first.completed, first.interval_s) == (4, 3.0)
    complete(table, clock, 1)
    clock.now += 1
    late = by_key(ledger.collect_for("late", clock.now))[KEY]
    assert (late.completed, late.interval_s) == (1, 1.0)
    assert by_key(ledger.collect(clock.now))[KEY].completed == 1


def test_a_collector_that_restarts_under_its_id_resumes_its_interval() -> None:
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    ledger.collect_for("autoscaler-0", clock.now)
    complete(table, clock, 2)
    clock.now += 1
    ledger.collect(clock.now)  # the embedded reader keeps going while autoscaler-0 restarts
    complete(table, clock, 1)
    clock.now += 1
    resumed = by_key(ledger.collect_for("autoscaler-0", clock.now))[KEY]
    assert (resumed.completed, resumed.interval_s) == (3, 2.0)


def test_completions_of_a_version_that_left_the_table_still_reach_every_collector() -> None:
    clock = Clock()
    table = make_table(clock, KEY, OTHER)
    ledger = TrafficLedger(table)
    ledger.collect_for("a", clock.now)
    ledger.collect_for("b", clock.now)
    complete(table, clock, 2, key=OTHER)
    clock.now += 1
    ledger.collect_for("a", clock.now)
    table.remove_route(OTHER.function)
    clock.now += 1
    gone = by_key(ledger.collect_for("b", clock.now))[OTHER]
    assert (gone.completed, gone.in_flight, gone.queued) == (2, 0, 0)
    assert OTHER not in by_key(ledger.collect_for("b", clock.now))


@pytest.mark.parametrize("collector_id", [pytest.param("", id="empty"), pytest.param("x" * 129, id="too-long")])
def test_a_bad_collector_id_is_refused_with_the_rule(collector_id: str) -> None:
    clock = Clock()
    with pytest.raises(InvalidInput, match="collector_id: must be 1 to 128 characters"):
        TrafficLedger(make_table(clock)).collect_for(collector_id, clock.now)


def test_past_the_cap_new_ids_are_refused_until_an_idle_one_is_forgotten() -> None:
    clock = Clock()
    ledger = TrafficLedger(make_table(clock), max_collectors=2, idle_s=60)
    ledger.collect_for("a", clock.now)
    clock.now += 30
    ledger.collect_for("b", clock.now)
    with pytest.raises(Unavailable, match="collector 'c' refused: 2 collectors are in use"):
        ledger.collect_for("c", clock.now)
    clock.now += 30
    ledger.collect_for("c", clock.now)
    assert ledger.collectors == {"b", "c"}


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5), st.sampled_from(["a", "b", LOCAL_COLLECTOR])),
        max_size=30,
    )
)
def test_every_collector_sees_every_completion_from_when_it_joined_to_its_last_read(
    steps: list[tuple[int, str]],
) -> None:
    """A collector joins at the previous read by anyone (0 for the very first read) and misses nothing after."""
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    done = done_at_any_read = 0
    seen: dict[str, int] = {}
    joined_at: dict[str, int] = {}
    done_at_last_read: dict[str, int] = {}
    for count, collector in steps:
        complete(table, clock, count)
        done += count
        clock.now += 0.5
        joined_at.setdefault(collector, done_at_any_read)
        seen[collector] = seen.get(collector, 0) + sum(i.completed for i in ledger.collect_for(collector, clock.now))
        done_at_last_read[collector] = done_at_any_read = done
    for collector, total in seen.items():
        assert total == done_at_last_read[collector] - joined_at[collector]


# the gRPC face


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RoutingTable, Clock, grpc.aio.Channel]]:
    clock = Clock()
    table = make_table(clock)
    server = MetricsServer(TrafficLedger(table, max_collectors=2), f"unix:{tmp_path}/metrics.sock", clock=clock)
    await server.start()
    async with grpc.aio.insecure_channel(f"unix:{tmp_path}/metrics.sock") as channel:
        yield table, clock, channel
    await server.stop()


async def call_collect(channel: grpc.aio.Channel, collector_id: str) -> metrics_pb2.CollectResponse:
    collect = channel.unary_unary(
        f"/{SERVICE}/Collect",
        request_serializer=metrics_pb2.CollectRequest.SerializeToString,
        response_deserializer=metrics_pb2.CollectResponse.FromString,
    )
    return await collect(metrics_pb2.CollectRequest(collector_id=collector_id), timeout=5)


async def test_collect_over_grpc_reports_the_collectors_interval(
    served: tuple[RoutingTable, Clock, grpc.aio.Channel],
) -> None:
    table, clock, channel = served
    await call_collect(channel, "a")
    complete(table, clock, 2)
    table.gate(KEY).traffic.started(clock.now)
    clock.now += 2
    response = await call_collect(channel, "a")
    [item] = response.versions
    assert (item.function, item.version) == ("hello", "abc123abc123")
    assert (item.completed, item.in_flight, item.queued, item.interval_s) == (2, 1, 0, 2.0)
    assert item.concurrency == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("collector_ids", "code", "detail"),
    [
        pytest.param([""], grpc.StatusCode.INVALID_ARGUMENT, "collector_id: must be 1 to 128", id="empty-id"),
        pytest.param(["local"], grpc.StatusCode.INVALID_ARGUMENT, "'local' is reserved", id="reserved-id"),
        pytest.param(["a", "b", "c"], grpc.StatusCode.RESOURCE_EXHAUSTED, "collector 'c' refused", id="over-cap"),
    ],
)
async def test_refusals_carry_a_grpc_status_and_the_reason(
    served: tuple[RoutingTable, Clock, grpc.aio.Channel], collector_ids: list[str], code: grpc.StatusCode, detail: str
) -> None:
    _, _, channel = served
    for collector_id in collector_ids[:-1]:
        await call_collect(channel, collector_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_collect(channel, collector_ids[-1])
    assert refused.value.code() == code
    assert detail in (refused.value.details() or "")


async def test_a_taken_port_is_a_clear_error_not_a_shared_port() -> None:
    clock = Clock()
    first = MetricsServer(TrafficLedger(make_table(clock)), "127.0.0.1:0")
    port = await first.start()
    second = MetricsServer(TrafficLedger(make_table(clock)), f"127.0.0.1:{port}")
    try:
        with pytest.raises(InvalidInput, match=f"cannot listen on '127.0.0.1:{port}'"):
            await second.start()
    finally:
        await first.stop()


def test_the_committed_stubs_are_what_gen_protos_writes(tmp_path: Path) -> None:
    outputs = [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    proto = str(ROOT / "nest/api/metrics.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={ROOT}", *outputs, proto], check=True)
    for name in ("metrics_pb2.py", "metrics_pb2.pyi"):
        fresh = (tmp_path / "nest/api" / name).read_text()
        assert fresh == (ROOT / "nest/api/_generated" / name).read_text(), "stale stubs: run scripts/gen_protos.sh"
