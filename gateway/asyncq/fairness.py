"""Which queue the dispatcher serves next: priorities with fairness, by stride scheduling. Pure.

Each (function, priority) queue with work has a *pass*; the dispatcher serves the eligible queue with the lowest
pass and advances it by its *stride*, `STRIDE_UNIT / weight(priority)`. A queue of priority p therefore gets a
share proportional to `PRIORITY_BASE ** p` of the dispatches among the queues that have work:

- no starvation: a low-priority queue's pass is always eventually the lowest (strict priority would starve it);
- one function's backlog does not stall others: functions with the same priority alternate, however deep one
  backlog is, and a function at its concurrency limit is skipped (not eligible) without losing its place;
- a queue that was idle joins at the current lowest pass, so it cannot claim the dispatches it "missed" in one
  burst (stride scheduling's standard rejoin rule).

Ties break on the key, so the same inputs always give the same choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

STRIDE_UNIT = 1_000_000.0
PRIORITY_BASE = 2.0
PRIORITY_MIN = 0
PRIORITY_MAX = 9


@dataclass(frozen=True, slots=True, order=True)
class QueueKey:
    function: str
    priority: int


@dataclass(frozen=True, slots=True)
class FairState:
    passes: tuple[tuple[QueueKey, float], ...] = ()
    """Pass per queue seen with work, sorted by key."""
    floor: float = 0.0
    """The global virtual time: the lowest pass served last; idle queues rejoin here."""


def weight(priority: int) -> float:
    return PRIORITY_BASE ** max(PRIORITY_MIN, min(PRIORITY_MAX, priority))


def pick(state: FairState, ready: Iterable[QueueKey]) -> tuple[QueueKey | None, FairState]:
    """The queue to serve next among `ready` (non-empty and under their function's limits), and the new state.

    A queue that was absent from `ready` (idle, or blocked at its function's limit) keeps its pass, but when it
    is seen again after the floor moved past it, it rejoins at the floor: absence accumulates no credit.
    """
    candidates = sorted(set(ready))
    if not candidates:
        return None, state
    passes = dict(state.passes)
    for key in candidates:
        passes[key] = max(passes.get(key, state.floor), state.floor)
    chosen = min(candidates, key=lambda key: (passes[key], key))
    served_at = passes[chosen]
    passes[chosen] = served_at + STRIDE_UNIT / weight(chosen.priority)
    return chosen, FairState(tuple(sorted(passes.items())), floor=served_at)


def forget(state: FairState, gone: Iterable[QueueKey]) -> FairState:
    """Drop queues that no longer exist (function deleted) so the state stays bounded."""
    drop = set(gone)
    return FairState(tuple(item for item in state.passes if item[0] not in drop), state.floor)


def shares(counts: Mapping[QueueKey, int]) -> dict[QueueKey, float]:
    """Fraction of dispatches each queue got: a helper for tests and `nest tasks` statistics."""
    total = sum(counts.values())
    return {key: count / total for key, count in counts.items()} if total else {}
