"""Limits an instance puts on itself before it loads user code: die with the platform, no core dumps, memory.

Applied by the instance itself (not with `preexec_fn` in the parent, which is unsafe with threads).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
THREAD_STACK_BYTES = 8 * 1024**2
MALLOC_ARENAS_BYTES = 2 * 64 * 1024**2
"""glibc reserves 64 MiB of address space per malloc arena; the backend sets MALLOC_ARENA_MAX=2."""


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""Looked up once, at import (in the zygote): a `ctypes.CDLL` per call builds a new function-pointer class each
time, which in a forked instance copies ~20 pages of the zygote's memory."""


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the platform process dies, so nothing outlives `nest up`."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def set_process_name(name: str) -> None:
    """What `ps -o comm` and /proc/PID/comm show (15 bytes): `nest:hello` for an instance, `nest-zygote`."""
    if _prctl is not None:
        _prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def virtual_size() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * resource.getpagesize()


def limit_memory(memory_bytes: int, concurrency: int, *, address_space: bool = True) -> str:
    """Cap the address space at what the interpreter already maps, plus `memory`, thread stacks and arenas.

    Approximate by nature (address space is not resident memory); where the backend placed the instance in a
    memory cgroup (exact), `address_space` is False and only core dumps are turned off. Returns what was set,
    for the instance's system log.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not address_space:
        return "memory capped by the instance's cgroup"
    try:
        limit = virtual_size() + memory_bytes + (concurrency + 4) * THREAD_STACK_BYTES + MALLOC_ARENAS_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError) as exc:
        return f"memory limit not applied: {exc}"
    return f"address-space limit {limit // 1024**2} MiB"


def close_inherited(*, keep: int) -> None:
    """Close every descriptor but stdio and `keep` (the status pipe): whatever the parent left open must not reach
    the function. uvloop's subprocess spawn leaves its own duplicates of the child's stdio (/dev/null, the log
    file) and a pipe of the platform's in a fresh instance; a forked one inherits the zygote's and its rehearsal's.
    """
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = top if top != resource.RLIM_INFINITY else 65536
    if keep < 3:  # nothing to keep (no status pipe) beyond stdio
        os.closerange(3, top)
        return
    os.closerange(3, keep)
    os.closerange(keep + 1, top)
