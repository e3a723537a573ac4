"""Which unpacked packages to evict from a node's cache: pure selection, no I/O (`cachejanitor.py` does that).

Instances materialise a package once per node into `<data_dir>/cache/<xx>/<digest>` (`runtime/unpack.py`) and
every later start of that version reuses it. Without eviction the cache only grows: every deployed version of
every function, deleted ones included, stays unpacked. The janitor keeps it within a byte budget
(`nest up --code-cache-size`), evicting in this order:

1. never a package an instance exists for (starting, ready or draining): its files are imported lazily and read
   through `__file__`, so removing them under a running process would break it;
2. first, packages no live version uses (older versions, deleted functions), least recently used first;
3. then, only if the cache is still over budget, the current packages of live versions with no instance
   (scaled to zero), least recently used first: evicting one costs its next cold start a fetch and unpack
   (tens of ms for a 20 MB package), which is what the budget trades for disk;
4. and nothing more as soon as the total fits: eviction stops at the first entry that brings it within budget.

If the packages in use alone exceed the budget, everything else goes and the cache stays over budget until they
stop; the janitor logs that. Ties on the last-use time break on the digest, so a selection is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Set


@dataclass(frozen=True, slots=True)
class CacheEntry:
    digest: str
    size: int
    """Bytes on disk: file sizes, the bytecode sidecar's included (directories and inodes are not counted)."""
    last_used: float
    """Epoch seconds: when an instance last started with it or ran with it (the directory's mtime)."""


@dataclass(frozen=True, slots=True)
class Selection:
    evict: tuple[str, ...]
    """In eviction order."""
    total: int
    """Cache bytes before."""
    kept: int
    """Cache bytes after."""

    @property
    def freed(self) -> int:
        return self.total - self.kept


def select_evictions(entries: Iterable[CacheEntry], *, budget: int, in_use: Set[str], current: Set[str]) -> Selection:
    """The entries to evict to bring the cache within `budget` bytes, by the rules in the module docstring.

    E.g. a 100-byte budget over old (60 B, used at 1), cur (50 B, current, used at 0), run (30 B, in use): the
    total is 140, evicting `old` leaves 80: `evict == ("old",)` though `cur` was used earlier.
    """
    listed = list(entries)
    total = sum(entry.size for entry in listed)
    kept = total
    evict: list[str] = []
    if total > budget:
        candidates = sorted(
            (entry for entry in listed if entry.digest not in in_use),
            key=lambda entry: (entry.digest in current, entry.last_used, entry.digest),
        )
        for entry in candidates:
            if kept <= budget:
                break
            evict.append(entry.digest)
            kept -= entry.size
    return Selection(tuple(evict), total, kept)
