"""`FakeMetricsSource`: traffic handed to the autoscaler by the test (the autoscaler's `MetricsSource` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import VersionTraffic


class FakeMetricsSource:
    def __init__(self) -> None:
        self.next: list[VersionTraffic] = []
        self.collected_at: list[float] = []

    def collect(self, now: float) -> list[VersionTraffic]:
        self.collected_at.append(now)
        traffic, self.next = self.next, []
        return traffic
