"""`FakeUsageSource`: the instances' CPU and memory handed to the autoscaler by the test (`UsageSource` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import VersionKey


class FakeUsageSource:
    def __init__(self) -> None:
        self.figures: dict[VersionKey, tuple[float | None, float | None]] = {}
        """(cores, bytes) per version, returned by every call until the test changes them."""
        self.calls = 0
        self.error: Exception | None = None

    async def usage(self) -> dict[VersionKey, tuple[float | None, float | None]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return dict(self.figures)
