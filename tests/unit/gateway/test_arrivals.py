"""QPS from arrivals: the gateway counts admitted requests; the ledger, gRPC and the aggregation carry them."""

from __future__ import annotations

from autoscaler.remote import _from_message, aggregate
from gateway.metrics_service import TrafficLedger, _to_message
from gateway.routing import RoutingTable
from nest.api._generated import metrics_pb2
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import Route, VersionKey, VersionTraffic

KEY = VersionKey(FunctionName("hello"), VersionId("abc123abc123"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_table(clock: Clock) -> RoutingTable:
    table = RoutingTable(clock=clock)
    table.set_route(Route(KEY, concurrency=10, timeout_s=30, max_body_bytes=1024))
    return table


def test_admitted_requests_arrive_once_whether_sent_at_once_or_queued_first() -> None:
    clock = Clock()
    table = make_table(clock)
    traffic = table.gate(KEY).traffic
    for _ in range(3):
        traffic.started(clock.now)
    traffic.enqueued(clock.now)
    traffic.enqueued(clock.now)
    traffic.dequeued(served=True, now=clock.now)  # the queued request now runs: not a second arrival
    traffic.dequeued(served=False, now=clock.now)  # gave up waiting: it did arrive
    clock.now += 1
    (seen,) = table.collect(clock.now)
    assert seen.arrived == 5
    assert seen.completed == 0, "none finished: completions would read as no load"
    clock.now += 1
    (seen,) = table.collect(clock.now)
    assert seen.arrived == 0, "each interval counts its own arrivals"


def test_every_collector_sees_every_arrival() -> None:
    clock = Clock()
    table = make_table(clock)
    ledger = TrafficLedger(table)
    ledger.collect_for("remote", clock.now)
    for _ in range(3):
        table.gate(KEY).traffic.started(clock.now)
        table.gate(KEY).traffic.started(clock.now)
        clock.now += 1
        (local,) = ledger.collect(clock.now)
        assert local.arrived == 2
    (remote,) = ledger.collect_for("remote", clock.now)
    assert remote.arrived == 6
    assert remote.interval_s == 3.0


def test_a_table_that_does_not_count_arrivals_reports_none_not_zero() -> None:
    class Table:
        def collect(self, now: float) -> list[VersionTraffic]:
            return [VersionTraffic(KEY, 1.0, 1, 0, 3, 1.0)]

    (seen,) = TrafficLedger(Table()).collect(101.0)
    assert seen.arrived is None


def test_arrivals_cross_grpc_and_add_up_over_replicas() -> None:
    counted = VersionTraffic(KEY, 1.0, 1, 0, 3, 1.0, arrived=7)
    uncounted = VersionTraffic(KEY, 2.0, 2, 0, 4, 1.0)

    def wire(item: VersionTraffic) -> VersionTraffic:
        return _from_message(metrics_pb2.VersionTraffic.FromString(_to_message(item).SerializeToString()))

    assert wire(counted).arrived == 7
    assert wire(uncounted).arrived is None, "unset stays unset (an older gateway)"
    assert wire(VersionTraffic(KEY, 0.0, 0, 0, 0, 1.0, arrived=0)).arrived == 0
    (summed,) = aggregate([[wire(counted)], [wire(counted)], [wire(uncounted)]])
    assert summed.arrived == 14
    assert summed.completed == 10
    (none,) = aggregate([[uncounted], [uncounted]])
    assert none.arrived is None
