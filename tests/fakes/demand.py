"""`FakeDemandSignal`: records pokes (the gateway's `DemandSignal` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import VersionKey


class FakeDemandSignal:
    def __init__(self) -> None:
        self.pokes: list[VersionKey] = []
        self.waiting: list[int] = []
        """How many requests waited at each poke."""

    def poke(self, key: VersionKey, waiting: int = 1) -> None:
        self.pokes.append(key)
        self.waiting.append(waiting)
