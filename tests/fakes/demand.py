"""`FakeDemandSignal`: records pokes (the gateway's `DemandSignal` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import VersionKey


class FakeDemandSignal:
    def __init__(self) -> None:
        self.pokes: list[VersionKey] = []

    def poke(self, key: VersionKey) -> None:
        self.pokes.append(key)
