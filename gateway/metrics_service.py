"""The gateway's half of `nest.metrics.v1.Metrics`: per-version traffic over gRPC, one interval per collector.

`RoutingTable.collect` has a single interval: whoever calls it resets the counters. With a remote autoscaler
(or two, or one that restarts) each reader needs its own interval, so `TrafficLedger` becomes the table's only
reader: every read by any collector takes one slice from the table and adds it to *every* known collector's
running totals, then hands the asking collector its totals and resets only those. Nobody steals anybody's
completions. `TrafficLedger.collect(now)` is the in-process reader (`nest up --metrics-grpc` gives it to the
embedded autoscaler as its `MetricsSource`), `collect_for(collector_id, now)` the gRPC one.

`MetricsServer` serves the ledger with `grpc.aio` on `host:port` or `unix:PATH`. The handler is built from the
typed messages and the file descriptor of `nest/api/metrics.proto` (where the collector-id rules are written
down); the client half is `autoscaler/remote.py`. Nothing here is on the request path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import grpc

from nest.api._generated import metrics_pb2
from nest.contracts.errors import InvalidInput, Unavailable
from nest.contracts.model import VersionKey, VersionTraffic

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("nest.gateway.metrics")

LOCAL_COLLECTOR = "local"
"""The collector id of the in-process reader (the embedded autoscaler); refused over gRPC."""
MAX_COLLECTOR_ID = 128
MAX_COLLECTORS = 32
"""Distinct collector ids a gateway keeps totals for: an autoscaler, its standby and a rollout's overlap need a
handful; the cap bounds what clients can make the gateway hold (one small dict per id)."""
COLLECTOR_IDLE_S = 300.0
"""A collector that has not read for this long is forgotten (an autoscaler that restarted under a new id)."""
SERVICE = metrics_pb2.DESCRIPTOR.services_by_name["Metrics"].full_name
MAX_REQUEST_BYTES = 4096
"""A `CollectRequest` is one id of at most 128 characters."""
MAX_CONCURRENT_RPCS = 16


class TrafficTable(Protocol):
    """What the ledger reads: `gateway.routing.RoutingTable` (one interval, reset on every call)."""

    def collect(self, now: float) -> list[VersionTraffic]: ...


@dataclass(slots=True)
class _Totals:
    """One collector's running totals since its last read."""

    since: float | None
    """Start of the collector's interval; None only on the ledger's very first read (the table's own interval
    then applies: since each gate was created)."""
    read_at: float
    area: dict[VersionKey, float] = field(default_factory=dict)
    """Sum of (in-flight + queued) x seconds; divided by the interval it gives the time-weighted mean."""
    completed: dict[VersionKey, int] = field(default_factory=dict)
    arrived: dict[VersionKey, int] = field(default_factory=dict)
    """Only versions whose table reports arrivals: a version absent here reports None (not counted), not 0."""

    def add(self, fresh: list[VersionTraffic]) -> None:
        for item in fresh:
            self.area[item.key] = self.area.get(item.key, 0.0) + item.concurrency * item.interval_s
            self.completed[item.key] = self.completed.get(item.key, 0) + item.completed
            if item.arrived is not None:
                self.arrived[item.key] = self.arrived.get(item.key, 0) + item.arrived

    def take(self, fresh: list[VersionTraffic], now: float) -> list[VersionTraffic]:
        """The collector's interval, ending now; starts the next one. Levels (in-flight, queued, cpu, memory and
        whatever else the table reports) are the fresh ones; a version gone from the table reports only its sums."""
        current = {item.key: item for item in fresh}
        result = []
        for key in current.keys() | self.area.keys():
            item = current.get(key) or VersionTraffic(key, 0.0, 0, 0, 0, 0.0)
            interval = now - self.since if self.since is not None else item.interval_s
            area = self.area.get(key, 0.0)
            concurrency = area / interval if interval > 0 else float(item.in_flight + item.queued)
            result.append(
                replace(
                    item,
                    concurrency=concurrency,
                    completed=self.completed.get(key, 0),
                    arrived=self.arrived.get(key),
                    interval_s=interval,
                    extra=dict(item.extra),
                )
            )
        self.area.clear()
        self.completed.clear()
        self.arrived.clear()
        self.since = self.read_at = now
        return result


class TrafficLedger:
    """Per-collector intervals over one routing table; the table's only reader once built.

    E.g. the embedded autoscaler reads every second and a remote one every 5 s: each 1 s slice is added to both
    totals, so the remote one sees all five seconds of completions, not the last fraction of a second.
    """

    def __init__(
        self, table: TrafficTable, *, max_collectors: int = MAX_COLLECTORS, idle_s: float = COLLECTOR_IDLE_S
    ) -> None:
        self._table = table
        self._max_collectors = max_collectors
        self._idle_s = idle_s
        self._totals: dict[str, _Totals] = {}
        self._last_read: float | None = None

    @property
    def collectors(self) -> frozenset[str]:
        return frozenset(self._totals)

    def collect(self, now: float) -> list[VersionTraffic]:
        """The in-process reader's interval (`MetricsSource` for the embedded autoscaler)."""
        return self.collect_for(LOCAL_COLLECTOR, now)

    def collect_for(self, collector_id: str, now: float) -> list[VersionTraffic]:
        """Traffic per version since `collector_id`'s previous read (monotonic `now`); resets only its totals.

        Raises `InvalidInput` for an empty or over-long id, `Unavailable` when `MAX_COLLECTORS` others are in use.
        """
        if not 0 < len(collector_id) <= MAX_COLLECTOR_ID:
            raise InvalidInput("collector_id", f"must be 1 to {MAX_COLLECTOR_ID} characters, got {len(collector_id)}")
        totals = self._totals.get(collector_id) or self._open(collector_id, now)
        fresh = self._table.collect(now)
        self._last_read = now
        for each in self._totals.values():
            each.add(fresh)
        return totals.take(fresh, now)

    def _open(self, collector_id: str, now: float) -> _Totals:
        for stale in [name for name, t in self._totals.items() if now - t.read_at >= self._idle_s]:
            del self._totals[stale]
            logger.info("metrics collector %r forgotten after %.0fs without a read", stale, self._idle_s)
        if len(self._totals) >= self._max_collectors:
            raise Unavailable(
                f"collector {collector_id!r} refused: {len(self._totals)} collectors are in use (the limit); "
                f"ids are forgotten {self._idle_s:.0f}s after their last read"
            )
        totals = _Totals(since=self._last_read, read_at=now)
        self._totals[collector_id] = totals
        return totals


def _to_message(traffic: VersionTraffic) -> metrics_pb2.VersionTraffic:
    return metrics_pb2.VersionTraffic(
        function=traffic.key.function,
        version=traffic.key.version,
        concurrency=traffic.concurrency,
        in_flight=traffic.in_flight,
        queued=traffic.queued,
        completed=traffic.completed,
        interval_s=traffic.interval_s,
        extra=traffic.extra,
        cpu=traffic.cpu,
        memory=traffic.memory,
        arrived=traffic.arrived,
    )


class MetricsServer:
    """Serves `nest.metrics.v1.Metrics` for one ledger on `address` (`HOST:PORT`, port 0 for any, or `unix:PATH`).

    ```python
    server = MetricsServer(TrafficLedger(table), "0.0.0.0:9090")
    group.create_task(server.run())      # serves until cancelled, then stops (grace for calls in progress)
    ```
    """

    def __init__(
        self,
        ledger: TrafficLedger,
        address: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = 1.0,
    ) -> None:
        self.address = address
        self.port: int | None = None
        """The bound TCP port once started (useful with port 0)."""
        self._ledger = ledger
        self._clock = clock
        self._grace_s = grace_s
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve; returns the bound port (0 for a Unix socket). Idempotent."""
        if self._server is not None:
            return self.port or 0
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._collect,
            request_deserializer=metrics_pb2.CollectRequest.FromString,
            response_serializer=metrics_pb2.CollectResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Collect": handler}),))
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise InvalidInput(
                "--metrics-grpc", f"cannot listen on {self.address!r} (in use, or not HOST:PORT / unix:PATH)"
            ) from exc
        await server.start()
        self._server, self.port = server, port
        logger.info("gateway metrics (gRPC %s) on %s", SERVICE, self.address)
        return port

    async def stop(self) -> None:
        """Stop accepting calls, let those in progress finish within the grace."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self._grace_s)

    async def run(self) -> None:
        """Start (unless started) and serve until cancelled; stops on the way out."""
        await self.start()
        try:
            assert self._server is not None
            await self._server.wait_for_termination()
        finally:
            await self.stop()

    async def _collect(
        self,
        request: metrics_pb2.CollectRequest,
        context: grpc.aio.ServicerContext[metrics_pb2.CollectRequest, metrics_pb2.CollectResponse],
    ) -> metrics_pb2.CollectResponse:
        if request.collector_id == LOCAL_COLLECTOR:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"collector_id: {LOCAL_COLLECTOR!r} is reserved for the gateway's in-process reader; pick another",
            )
        try:
            traffic = self._ledger.collect_for(request.collector_id, self._clock())
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return metrics_pb2.CollectResponse(versions=[_to_message(item) for item in traffic])
