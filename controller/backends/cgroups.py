"""Memory limits through cgroups, where the machine lets us create them; rlimits (set by the runtime) otherwise.

cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` lists `memory`): a `nest/<instance>` child with `memory.max`.
cgroup v1 (`/sys/fs/cgroup/memory` writable): `nest/<instance>` with `memory.limit_in_bytes`. The instance's
pid is written to `cgroup.procs` right after it is spawned, before it imports user code in earnest (its first
milliseconds run unconfined: acceptable, the runtime's own rlimit already bounds them). Detection happens in
`detect()`, called from the backend's `run()`: constructors do no I/O.
"""

from __future__ import annotations

import contextlib
import logging
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

    @staticmethod
    def remove(group: Path) -> None:
        with contextlib.suppress(OSError):
            group.rmdir()


def detect(root: Path = ROOT) -> Cgroups | None:
    """The cgroup hierarchy Nest may use here, or None."""
    controllers = root / "cgroup.controllers"
    candidates = []
    if controllers.is_file() and "memory" in controllers.read_text().split():
        candidates.append((root / "nest", "memory.max"))
    if (root / "memory").is_dir():
        candidates.append((root / "memory" / "nest", "memory.limit_in_bytes"))
    for base, limit_file in candidates:
        try:
            base.mkdir(exist_ok=True)
        except OSError:
            continue
        if (base / "cgroup.procs").exists():
            return Cgroups(base, limit_file)
    return None
