"""`FakeScaleTarget`: versions with specs and instance counts; records every scale call (`ScaleTarget` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.model import ScalingSpec, VersionKey


class FakeScaleTarget:
    def __init__(self) -> None:
        self.versions: dict[VersionKey, tuple[ScalingSpec, int]] = {}
        self.calls: list[tuple[VersionKey, int, str]] = []
        self.modes: dict[VersionKey, str] = {}
        self.starting: dict[VersionKey, int] = {}
        self.follow = True
        """Make the instance count follow the desired count at once, as a perfect backend would."""

    def scalables(self) -> dict[VersionKey, tuple[ScalingSpec, int]]:
        return dict(self.versions)

    def counts(self, key: VersionKey) -> tuple[int, int]:
        """(ready, starting): all ready unless the test says how many are still starting."""
        current = self.versions[key][1] if key in self.versions else 0
        starting = min(self.starting.get(key, 0), current)
        return current - starting, starting

    async def scale(self, key: VersionKey, desired: int, reason: str, *, mode: str = "stable") -> None:
        self.calls.append((key, desired, reason))
        self.modes[key] = mode
        if self.follow and key in self.versions:
            self.versions[key] = (self.versions[key][0], desired)
