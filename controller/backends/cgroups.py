"""Memory limits through cgroups, where the machine lets us create them; rlimits (set by the runtime) otherwise.

cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` lists `memory`): a `nest/<platform pid>/<instance>` child with
`memory.max`. cgroup v1 (`/sys/fs/cgroup/memory` writable): the same under `memory/`, with
`memory.limit_in_bytes`. The instance's
pid is written to `cgroup.procs` right after it is spawned, from a worker thread because creating a group can
take ~10 ms here (its first milliseconds run unconfined). Idle pool instances are placed while idle, so a claim
only rewrites the cap. Detection happens in
`detect()`, called from the backend's `run()`: constructors do no I/O.

The same groups tell the autoscaler what an instance uses (`usage`, read once a tick by
`controller/backends/usage.py`): its *working set*, the group's memory less the page cache the kernel may drop
(`inactive_file`), as the kubelet and cAdvisor count it for Kubernetes' HPA; and, on cgroup v2 only, its CPU
time (`cpu.stat` is there whether or not the cpu controller is enabled). A v1 memory group keeps no CPU time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("nest.cgroups")

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Cgroups:
    """A writable `nest` hierarchy and the file that caps memory in it."""

    base: Path
    limit_file: str

    def place(self, instance_id: str, pid: int, memory_bytes: int) -> Path | None:
        """Put `pid` in its own group capped at `memory_bytes`; None (and a log line) if the kernel refuses."""
        group = self.base / instance_id
        try:
            group.mkdir(exist_ok=True)
            (group / self.limit_file).write_text(str(memory_bytes))
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            logger.warning("cgroup for %s not applied: %s", instance_id, exc)
            self.remove(group)
            return None
        return group

    @property
    def unified(self) -> bool:
        """cgroup v2 (one hierarchy: memory and CPU time in the same group)."""
        return self.limit_file == "memory.max"

    def usage(self, group: Path) -> tuple[float | None, float | None]:
        """(CPU seconds, working-set bytes) of a group since it was created; None for what this hierarchy does
        not keep (v1 has no CPU time here) or what could not be read (the group just went)."""
        if self.unified:
            cpu_usec = _field(group / "cpu.stat", b"usage_usec")
            memory = _number(group / "memory.current")
            inactive = _field(group / "memory.stat", b"inactive_file")
        else:
            cpu_usec = None
            memory = _number(group / "memory.usage_in_bytes")
            inactive = _field(group / "memory.stat", b"total_inactive_file")
        cpu_s = cpu_usec / 1e6 if cpu_usec is not None else None
        if memory is not None and inactive is not None:
            memory = max(0, memory - inactive)
        return cpu_s, float(memory) if memory is not None else None

    def limit(self, group: Path, memory_bytes: int) -> bool:
        """Change a group's cap (a claimed idle instance gets its function's `memory`); cheap, unlike `place`."""
        try:
            (group / self.limit_file).write_text(str(memory_bytes))
        except OSError as exc:
            logger.warning("cgroup limit for %s not applied: %s", group.name, exc)
            return False
        return True

    @staticmethod
    def remove(group: Path) -> None:
        with contextlib.suppress(OSError):
            group.rmdir()


def _number(path: Path) -> int | None:
    try:
        return int(path.read_bytes())
    except (OSError, ValueError):
        return None


def _field(path: Path, name: bytes) -> int | None:
    """The value of `name` in a flat-keyed cgroup file (`usage_usec 123`); None if absent or unreadable."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def detect(root: Path = ROOT, *, owner: int) -> Cgroups | None:
    """The cgroup hierarchy this platform (pid `owner`) may use here, or None. Groups live under
    `nest/<owner>/`, so several platforms on one machine keep apart; groups left by platforms that died are
    removed on the way."""
    controllers = root / "cgroup.controllers"
    candidates = []
    if controllers.is_file() and "memory" in controllers.read_text().split():
        candidates.append((root / "nest", "memory.max"))
    if (root / "memory").is_dir():
        candidates.append((root / "memory" / "nest", "memory.limit_in_bytes"))
    for shared, limit_file in candidates:
        try:
            shared.mkdir(exist_ok=True)
            _remove_stale(shared)
            base = shared / str(owner)
            base.mkdir(exist_ok=True)
        except OSError:
            continue
        if (base / "cgroup.procs").exists():
            return Cgroups(base, limit_file)
    return None


def _remove_stale(shared: Path) -> None:
    for group in shared.iterdir():
        if group.is_dir() and group.name.isdigit() and not _alive(int(group.name)):
            remove_tree(group)


def remove_tree(group: Path) -> None:
    """Remove a platform's groups (empty ones only: the kernel refuses groups that still hold processes)."""
    for child in group.iterdir():
        if child.is_dir():
            Cgroups.remove(child)
    Cgroups.remove(group)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
