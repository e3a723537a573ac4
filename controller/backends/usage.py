"""What each live instance uses, read once per autoscaler tick: CPU time and memory, summed per version.

Where the numbers come from, per instance (cheapest accurate source first):

- **CPU seconds**: the instance's cgroup v2 `cpu.stat` `usage_usec` (every process in the group, children
  included); otherwise `/proc/PID/stat` utime + stime + cutime + cstime (its threads and the children it waited
  for; a child it leaves running is not counted until reaped). `/proc` costs ~12 µs per instance here.
- **memory bytes**: the cgroup's working set (`controller/backends/cgroups.py`: v1 or v2); otherwise the PSS of
  `/proc/PID/smaps_rollup`, falling back to the RSS of `/proc/PID/statm` where that file is missing (Linux <
  4.14). PSS, not RSS, because most instances are forked from a warm pool's zygote and share its imported
  pages copy-on-write: RSS counts those pages in full in every instance, so a version's total would grow by
  the zygote's size with each instance whatever the load (measured: a warm-pool instance's RSS is 26.5 MiB and
  its PSS 8 MiB), and a memory target would scale on the instance count rather than on the function's own memory.
  PSS charges each shared page once, split between the sharers. It costs more: 0.3 to 1 ms per instance
  against ~27 µs for `statm` (the kernel walks the page tables; `tests/bench/bench_usage.py`), so at most
  `PSS_READS_PER_TICK` instances are re-read per tick, the least recently read first (a new instance is read
  at once), and the others report their last PSS: with 50 instances each figure is at most 5 ticks old, and
  memory moves slowly. Only where
  the instance has no memory cgroup; all of it in a worker thread, off the event loop.

`UsageMeter.measure` does the reading (blocking: the backend runs it with `asyncio.to_thread`) and hands the
counters to the pure `controller/backends/rates.py`, which turns them into mean cores over the interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from controller.backends.rates import Baseline, Sample, Usage, advance

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from controller.backends.cgroups import Cgroups
    from nest.contracts.model import VersionKey

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PSS_READS_PER_TICK = 10
"""`smaps_rollup` reads per tick (each up to ~1 ms): bounds the tick's cost whatever the instance count."""


@dataclass(frozen=True, slots=True)
class Target:
    """One live instance to sample."""

    instance_id: str
    key: VersionKey
    pid: int
    cgroup: Path | None


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime + cutime + cstime of `pid`, in seconds; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
        fields = raw[raw.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
        return sum(int(field) for field in fields[11:15]) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def proc_memory(pid: int) -> float | None:
    """PSS of `pid` in bytes (RSS where the kernel has no `smaps_rollup`); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            for line in file:
                if line.startswith(b"Pss:"):
                    return float(int(line.split()[1]) * 1024)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return float(int(file.read().split()[1]) * PAGE_BYTES)
    except (OSError, ValueError, IndexError):
        return None


def sample(target: Target, cgroups: Cgroups | None, *, proc_memory_too: bool = True) -> Sample:
    """One instance's counters: from its cgroup where it has one, from `/proc` for what the cgroup lacks
    (memory only if `proc_memory_too`: the meter rations those reads)."""
    cpu_s = memory = None
    if target.cgroup is not None and cgroups is not None:
        cpu_s, memory = cgroups.usage(target.cgroup)
    if cpu_s is None:
        cpu_s = proc_cpu_s(target.pid)
    if memory is None and proc_memory_too:
        memory = proc_memory(target.pid)
    return Sample(target.key, target.pid, cpu_s, memory)


class UsageMeter:
    """Keeps each instance's previous CPU reading between calls; one meter per backend, one caller at a time."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, pss_reads_per_tick: int = PSS_READS_PER_TICK
    ) -> None:
        self._clock = clock
        self._pss_reads = pss_reads_per_tick
        self._baselines: dict[str, Baseline] = {}
        self._memory: dict[str, tuple[int, float, int]] = {}
        """Per instance without a cgroup: (pid, bytes, tick) of its last `/proc` memory read."""
        self._ticks = 0
        self.last: dict[VersionKey, Usage] = {}
        """The latest figures per version (for `nest describe`)."""

    def measure(self, targets: Iterable[Target], cgroups: Cgroups | None) -> dict[VersionKey, Usage]:
        """Read every target now (blocking file reads) and rate them against the previous call."""
        self._ticks += 1
        targets = list(targets)
        due = self._due(targets, cgroups)
        samples = {}
        for target in targets:
            found = sample(target, cgroups, proc_memory_too=target.instance_id in due)
            held = self._memory.get(target.instance_id)
            if target.instance_id in due and found.memory_bytes is not None:
                self._memory[target.instance_id] = (target.pid, found.memory_bytes, self._ticks)
            elif found.memory_bytes is None and held is not None and held[0] == target.pid:
                found = replace(found, memory_bytes=held[1])
            samples[target.instance_id] = found
        self._memory = {name: held for name, held in self._memory.items() if name in samples}
        self._baselines, self.last = advance(self._baselines, samples, self._clock())
        return self.last

    def _due(self, targets: list[Target], cgroups: Cgroups | None) -> set[str]:
        """Instances whose memory may be read from `/proc` this tick: every one with a cgroup (a fallback only if
        the group cannot be read), every one without a figure yet, and the `pss_reads_per_tick` least recently
        read of the others."""
        due = {target.instance_id for target in targets if target.cgroup is not None and cgroups is not None}
        held: list[tuple[int, str]] = []
        for target in targets:
            known = self._memory.get(target.instance_id)
            if known is None or known[0] != target.pid:
                due.add(target.instance_id)
            elif target.instance_id not in due:
                held.append((known[2], target.instance_id))
        held.sort()
        return due | {instance_id for _, instance_id in held[: self._pss_reads]}
