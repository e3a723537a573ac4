"""Queued async work reaches the autoscaler as `queued` traffic of the function's live version."""

from __future__ import annotations

from gateway.routing import RoutingTable
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import Route, VersionKey

LIVE = VersionKey(FunctionName("jobs"), VersionId("v2"))
OLD = VersionKey(FunctionName("jobs"), VersionId("v1"))


def test_async_work_waiting_to_start_counts_as_queued_for_the_live_version_only() -> None:
    table = RoutingTable(clock=lambda: 0.0)
    table.set_route(Route(LIVE, concurrency=10, timeout_s=30.0, max_body_bytes=1024))
    table.gate(OLD)
    table.async_waiting = lambda function: {"jobs": 4}.get(function, 0)
    traffic = {item.key: item for item in table.collect(1.0)}
    assert traffic[LIVE].queued == 4
    assert traffic[OLD].queued == 0


def test_without_a_dispatcher_queued_is_the_activator_buffer_alone() -> None:
    table = RoutingTable(clock=lambda: 0.0)
    table.set_route(Route(LIVE, concurrency=10, timeout_s=30.0, max_body_bytes=1024))
    assert [item.queued for item in table.collect(1.0)] == [0]
