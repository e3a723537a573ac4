"""What each live instance uses, read once per autoscaler tick: CPU time and memory, summed per version.

Where the numbers come from, per instance (cheapest accurate source first):

- **CPU seconds**: the instance's cgroup v2 `cpu.stat` `usage_usec` (every process in the group, children
  included); otherwise `/proc/PID/stat` utime + stime + cutime + cstime (its threads and the children it waited
  for; a child it leaves running is not counted until reaped). `/proc` costs ~12 µs per instance here.
- **memory bytes**: the cgroup's working set (`controller/backends/cgroups.py`: v1 or v2); otherwise the PSS of
  `/proc/PID/smaps_rollup`, falling back to the RSS of `/proc/PID/statm` where that file is missing (Linux <
  4.14). PSS, not RSS, because most instances are forked from a warm pool's zygote and share its imported
  pages copy-on-write: RSS counts those pages in full in every instance, so a version's total would grow by
  the zygote's size with each instance whatever the load (measured: a fresh interpreter's RSS is 20 MiB and its
  PSS 11 MiB), and a memory target would scale on the instance count rather than on the function's own memory.
  PSS charges each shared page once, split between the sharers. It costs more: ~275 µs per instance against
  ~9 µs for `statm` (the kernel walks the page tables), paid once a tick in a worker thread, and only where the
  instance has no memory cgroup.

`UsageMeter.measure` does the reading (blocking: the backend runs it with `asyncio.to_thread`) and hands the
counters to the pure `controller/backends/rates.py`, which turns them into mean cores over the interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.backends.rates import Baseline, Sample, Usage, advance

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from controller.backends.cgroups import Cgroups
    from nest.contracts.model import VersionKey

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


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


def sample(target: Target, cgroups: Cgroups | None) -> Sample:
    """One instance's counters: from its cgroup where it has one, from `/proc` for what the cgroup lacks."""
    cpu_s = memory = None
    if target.cgroup is not None and cgroups is not None:
        cpu_s, memory = cgroups.usage(target.cgroup)
    if cpu_s is None:
        cpu_s = proc_cpu_s(target.pid)
    if memory is None:
        memory = proc_memory(target.pid)
    return Sample(target.key, target.pid, cpu_s, memory)


class UsageMeter:
    """Keeps each instance's previous CPU reading between calls; one meter per backend, one caller at a time."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._baselines: dict[str, Baseline] = {}
        self.last: dict[VersionKey, Usage] = {}
        """The latest figures per version (for `nest describe`)."""

    def measure(self, targets: Iterable[Target], cgroups: Cgroups | None) -> dict[VersionKey, Usage]:
        """Read every target now (blocking file reads) and rate them against the previous call."""
        samples = {target.instance_id: sample(target, cgroups) for target in targets}
        self._baselines, self.last = advance(self._baselines, samples, self._clock())
        return self.last
