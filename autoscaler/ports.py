"""Ports the autoscaler consumes: where traffic comes from and where desired counts go.

`MetricsSource` is satisfied by the gateway's routing table, `ScaleTarget` by the controller's fleet; neither is
imported here (`nest/wiring/embedded.py` checks the fit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic


class MetricsSource(Protocol):
    def collect(self, now: float) -> list[VersionTraffic]:
        """One interval of traffic per version (monotonic `now`); resets the interval counters."""
        ...


class ScaleTarget(Protocol):
    def scalables(self) -> dict[VersionKey, tuple[ScalingSpec, int]]:
        """Every live version: its scaling spec and how many instances exist now (ready or starting)."""
        ...

    async def scale(self, key: VersionKey, desired: int, reason: str) -> None:
        """Aim for `desired` instances; called every tick (no-ops are the target's to ignore)."""
        ...
