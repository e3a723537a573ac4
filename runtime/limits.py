"""Limits an instance puts on itself before it loads user code: die with the platform, no core dumps, memory.

Applied by the instance itself (not with `preexec_fn` in the parent, which is unsafe with threads).
"""

from __future__ import annotations

import ctypes
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
THREAD_STACK_BYTES = 8 * 1024**2


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the platform process dies, so nothing outlives `nest up`."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def virtual_size() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * resource.getpagesize()


def limit_memory(memory_bytes: int, concurrency: int) -> str:
    """Cap the address space at what the interpreter already maps, plus `memory`, plus thread stacks.

    Approximate by nature (address space is not resident memory); exact limits need cgroups. Returns what was
    set, for the instance's system log.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        limit = virtual_size() + memory_bytes + (concurrency + 4) * THREAD_STACK_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError) as exc:
        return f"memory limit not applied: {exc}"
    return f"address-space limit {limit // 1024**2} MiB"
