"""`GrpcMetricsSource`: the autoscaler's `MetricsSource` over gRPC, adding up many gateway replicas.

Each tick it calls `nest.metrics.v1.Metrics/Collect` on every replica at once, each call with its own deadline,
and sums the answers per version. A replica that fails (down, too slow, a malformed reply) is skipped for that
tick: the decision goes ahead on the replicas that answered, and `answered` says how many did (none answering
raises `Unavailable` rather than reporting no traffic). A failing replica is logged once when it starts failing
and once when it answers again, not on every tick.

The protocol and the collector-id rules are in `nest/api/metrics.proto`; the server half is
`gateway/metrics_service.py`. This module is async I/O only; the adding-up (`aggregate`) is pure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import grpc

from nest.api._generated import metrics_pb2
from nest.contracts.errors import Unavailable
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import VersionKey, VersionTraffic

if TYPE_CHECKING:
    from collections.abc import Iterable

logger = logging.getLogger("nest.autoscaler.remote")

METHOD = "/" + metrics_pb2.DESCRIPTOR.services_by_name["Metrics"].full_name + "/Collect"
DEFAULT_DEADLINE_S = 0.5
"""Half the 1 s tick: a slow replica must not hold up the decision for the others."""
MAX_RESPONSE_BYTES = 4 * 1024**2
"""~30,000 versions at ~100 bytes each: far above what one gateway routes, well below what would hurt."""
MAX_COLLECTOR_ID = 128
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    # gRPC backs off reconnecting to a dead replica for up to 120 s by default; 5 s lets a replica that comes
    # back count again within a few ticks.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class GrpcMetricsSource:
    """Traffic of every gateway replica in `addresses` (`HOST:PORT` or `unix:PATH`), summed per version.

    ```python
    source = GrpcMetricsSource(["gw-0.gw:9090", "gw-1.gw:9090"], collector_id="autoscaler-0")
    traffic = await source.collect(loop.time())   # source.answered == 2 if both replied
    ```
    Give a `collector_id` that is stable across restarts of this autoscaler and unique to it (e.g. its pod
    name): a restart then resumes its interval on every gateway, and another reader never shares its counts.
    The default is a fresh random id. Channels open on the first `collect`; `close()` closes them.
    """

    def __init__(
        self, addresses: Iterable[str], *, collector_id: str | None = None, deadline_s: float = DEFAULT_DEADLINE_S
    ) -> None:
        self.addresses = tuple(dict.fromkeys(addresses))
        if not self.addresses:
            raise ValueError("GrpcMetricsSource needs at least one gateway address (HOST:PORT or unix:PATH)")
        self.collector_id = collector_id or f"autoscaler-{uuid.uuid4().hex[:12]}"
        if len(self.collector_id) > MAX_COLLECTOR_ID:
            raise ValueError(f"collector_id: at most {MAX_COLLECTOR_ID} characters, got {len(self.collector_id)}")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s: must be positive, got {deadline_s}")
        self.deadline_s = deadline_s
        self.answered = 0
        """How many replicas answered the last `collect`."""
        self.failing: set[str] = set()
        """Replicas whose last call failed (each logged once when it started failing)."""
        self._calls: dict[
            str, grpc.aio.UnaryUnaryMultiCallable[metrics_pb2.CollectRequest, metrics_pb2.CollectResponse]
        ] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def collect(self, now: float) -> list[VersionTraffic]:
        """One interval per version, summed over the replicas that answered within the deadline.

        Raises `Unavailable` when none answered: an empty list would read as "no traffic" and scale down.
        `now` is unused: each gateway measures its intervals with its own clock.
        """
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._collect_one(address)) for address in self.addresses]
        replies = [reply for task in tasks if (reply := task.result()) is not None]
        self.answered = len(replies)
        if not replies:
            raise Unavailable(f"no gateway replica answered the metrics call ({len(self.addresses)} tried)")
        return aggregate(replies)

    async def close(self) -> None:
        channels, self._channels, self._calls = self._channels, [], {}
        for channel in channels:
            await channel.close()

    async def _collect_one(self, address: str) -> list[VersionTraffic] | None:
        request = metrics_pb2.CollectRequest(collector_id=self.collector_id)
        try:
            response = await self._call(address)(request, timeout=self.deadline_s)
            traffic = [_from_message(item) for item in response.versions]
        except grpc.aio.AioRpcError as exc:
            self._failed(address, f"{exc.code().name}: {exc.details()}")
            return None
        except ValueError as exc:
            self._failed(address, f"malformed reply: {exc}")
            return None
        if address in self.failing:
            self.failing.discard(address)
            logger.info("gateway metrics replica %s answers again", address)
        return traffic

    def _failed(self, address: str, why: str) -> None:
        if address not in self.failing:
            self.failing.add(address)
            logger.warning("gateway metrics replica %s skipped until it answers again (%s)", address, why)

    def _call(
        self, address: str
    ) -> grpc.aio.UnaryUnaryMultiCallable[metrics_pb2.CollectRequest, metrics_pb2.CollectResponse]:
        call = self._calls.get(address)
        if call is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels.append(channel)
            call = channel.unary_unary(
                METHOD,
                request_serializer=metrics_pb2.CollectRequest.SerializeToString,
                response_deserializer=metrics_pb2.CollectResponse.FromString,
            )
            self._calls[address] = call
        return call


def aggregate(replies: Iterable[list[VersionTraffic]]) -> list[VersionTraffic]:
    """Per version: in-flight, queued, completed, arrived, concurrency and extras summed; the interval is the longest.

    Pure. Summing concurrency is right because replicas see disjoint requests over (nearly) the same interval:
    two replicas each averaging 3.0 in flight mean 6.0 for the version. `cpu` and `memory` describe the
    version's instances, which every replica that reports them reports alike, so they take the largest.
    """
    totals: dict[VersionKey, VersionTraffic] = {}
    for reply in replies:
        for item in reply:
            seen = totals.get(item.key)
            if seen is None:
                totals[item.key] = item
                continue
            extra = dict(seen.extra)
            for name, value in item.extra.items():
                extra[name] = extra.get(name, 0.0) + value
            totals[item.key] = replace(
                seen,
                concurrency=seen.concurrency + item.concurrency,
                in_flight=seen.in_flight + item.in_flight,
                queued=seen.queued + item.queued,
                completed=seen.completed + item.completed,
                arrived=_summed(seen.arrived, item.arrived),
                interval_s=max(seen.interval_s, item.interval_s),
                extra=extra,
                cpu=_largest(seen.cpu, item.cpu),
                memory=_largest(seen.memory, item.memory),
            )
    return list(totals.values())


def _summed(one: int | None, other: int | None) -> int | None:
    """Arrivals of the replicas that count them (None only if none does)."""
    return one + other if one is not None and other is not None else (one if other is None else other)


def _largest(one: float | None, other: float | None) -> float | None:
    return max(one, other) if one is not None and other is not None else (one if other is None else other)


def _from_message(item: metrics_pb2.VersionTraffic) -> VersionTraffic:
    """Checks what a replica sent: a bad value skips the replica for this tick rather than misleading a decision."""
    if not item.function or not item.version:
        raise ValueError("a version without a function or version name")
    figures = {
        "concurrency": item.concurrency,
        "in_flight": item.in_flight,
        "queued": item.queued,
        "completed": item.completed,
        "interval_s": item.interval_s,
        **{name: getattr(item, name) for name in ("cpu", "memory", "arrived") if item.HasField(name)},
    }
    for name, value in figures.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{item.function}@{item.version} {name} is {value} (expected a finite value >= 0)")
    for name, value in item.extra.items():
        if not math.isfinite(value):
            raise ValueError(f"{item.function}@{item.version} extra {name!r} is {value} (expected a finite value)")
    return VersionTraffic(
        VersionKey(FunctionName(item.function), VersionId(item.version)),
        item.concurrency,
        item.in_flight,
        item.queued,
        item.completed,
        item.interval_s,
        dict(item.extra),
        item.cpu if item.HasField("cpu") else None,
        item.memory if item.HasField("memory") else None,
        item.arrived if item.HasField("arrived") else None,
    )
