"""The address-space cap leaves room for `concurrency` handler threads (each reserves a stack and may use a
malloc arena) while still stopping a function that allocates far past its memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from runtime.limits import limit_memory
    print(limit_memory(64 * 1024**2, 64))
    barrier = threading.Barrier(65)
    threads = [threading.Thread(target=lambda: (bytearray(1024 * 1024), barrier.wait())) for _ in range(64)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    print("threads ok")
    try:
        hog = bytearray(int(sys.argv[1]))
    except MemoryError:
        print("refused")
    """
)


def run(allocate: int) -> str:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(allocate)], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return result.stdout


def test_sixty_four_handler_threads_fit_under_the_cap() -> None:
    assert "threads ok" in run(16 * 1024**2)


def test_an_allocation_far_past_the_memory_is_refused() -> None:
    assert "refused" in run(8 * 1024**3)
