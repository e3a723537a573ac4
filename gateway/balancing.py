"""Load balancing: which ready instance takes the next request.

Pure: no I/O, no clock reads, no randomness. The activator (`gateway/activator.py`) feeds it its endpoint slots
and a rotating start index, and acts on the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence


class Slot(Protocol):
    """An instance as the balancer sees it: how busy, and how busy it may get."""

    @property
    def in_flight(self) -> int: ...

    @property
    def capacity(self) -> int: ...


def pick_instance(slots: Sequence[Slot], start: int = 0) -> int | None:
    """Index of the least in-flight slot with free capacity, or None when every slot is full (or none exist).

    Ties go to the first one found scanning from `start` (wrapping), so a caller that advances `start` on each
    call spreads equal load round-robin. E.g. in-flight [2, 0, 0] with capacity 2, start 2 -> 2; start 0 -> 1.
    """
    count = len(slots)
    best: int | None = None
    best_load = 0
    for offset in range(count):
        index = (start + offset) % count
        slot = slots[index]
        load = slot.in_flight
        if load >= slot.capacity:
            continue
        if best is None or load < best_load:
            best, best_load = index, load
            if load == 0:
                break
    return best
