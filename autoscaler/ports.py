"""Ports the autoscaler consumes: where traffic and resource usage come from and where desired counts go.

`MetricsSource` is satisfied by the gateway's routing table in process and by `autoscaler/remote.py`'s gRPC
client for gateways elsewhere; `UsageSource` by the backend that runs the instances (the local backend samples
cgroups and `/proc`); `ScaleTarget` by the controller's fleet. None is imported here (`nest/wiring/embedded.py`
checks the fit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

    from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic


class MetricsSource(Protocol):
    def collect(self, now: float) -> list[VersionTraffic] | Awaitable[list[VersionTraffic]]:
        """One interval of traffic per version since the last call, resetting the interval counters.

        Either `async def collect` (a remote source: `autoscaler/remote.py` asks gateways over gRPC) or a plain
        `def` (the in-process routing table, which must not make its hot path wait); the loop awaits what needs
        it. `now` is the autoscaler's monotonic clock; a source with its own clock may ignore it. A version with
        no entry had no traffic in the interval.
        """
        ...


class UsageSource(Protocol):
    async def usage(self) -> Mapping[VersionKey, tuple[float | None, float | None]]:
        """(cores, bytes) in use by each version's instances: cores the mean since the previous call, bytes now.

        Called once a tick, before the decisions. A version left out, or a None, is a figure the backend does
        not know (not zero): the decision then records nothing for that metric this tick.
        """
        ...


class ScaleTarget(Protocol):
    def scalables(self) -> dict[VersionKey, tuple[ScalingSpec, int]]:
        """Every live version: its scaling spec and how many instances exist now (ready or starting)."""
        ...

    def counts(self, key: VersionKey) -> tuple[int, int]:
        """(ready, starting) instances of a version: panic compares demand with the ready ones' capacity."""
        ...

    async def scale(self, key: VersionKey, desired: int, reason: str, *, mode: str = "stable") -> None:
        """Aim for `desired` instances; called every decision (no-ops are the target's to ignore).

        `reason` and `mode` ("stable" or "panic") are for people: `nest describe` shows them.
        """
        ...
