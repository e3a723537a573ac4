"""Reading an instance's CPU time and memory: cgroup v1/v2 files (laid out by the test) and a real `/proc`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from controller.backends import usage
from controller.backends.cgroups import Cgroups
from controller.backends.usage import Target, UsageMeter, proc_cpu_s, proc_memory, sample
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import VersionKey

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = VersionKey(FunctionName("f"), VersionId("v1"))
BUSY = "import time\nend = time.process_time() + {cpu}\nwhile time.process_time() < end: pass\ntime.sleep(60)\n"


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A child that burns 0.3 s of CPU, then sleeps (killed at the end)."""
    child = subprocess.Popen([sys.executable, "-c", BUSY.format(cpu=0.3)])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_proc_cpu_counts_what_a_process_burned(busy: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while (proc_cpu_s(busy.pid) or 0.0) < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
    used = proc_cpu_s(busy.pid)
    assert used is not None
    assert 0.3 <= used < 2.0


def test_proc_memory_is_the_pss_at_most_the_rss() -> None:
    pss = proc_memory(os.getpid())
    with open(f"/proc/{os.getpid()}/statm", "rb") as file:
        rss = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert pss is not None
    assert 0 < pss <= rss * 1.05  # (the process allocates a little between the two reads)


def test_a_process_that_is_gone_reads_as_unknown() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert proc_cpu_s(child.pid) is None
    assert proc_memory(child.pid) is None


def test_cgroup_v2_gives_cpu_time_and_the_working_set(tmp_path: Path) -> None:
    group = tmp_path / "inst-1"
    group.mkdir()
    (group / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (group / "memory.current").write_text("10000000\n")
    (group / "memory.stat").write_text("anon 8000000\nfile 2000000\nactive_file 500000\ninactive_file 1500000\n")
    assert Cgroups(tmp_path, "memory.max").usage(group) == (1.5, 8_500_000.0)


def test_cgroup_v1_gives_the_working_set_and_cpu_comes_from_proc(tmp_path: Path) -> None:
    group = tmp_path / "inst-1"
    group.mkdir()
    (group / "memory.usage_in_bytes").write_text("4096000\n")
    (group / "memory.stat").write_text("cache 1000\ninactive_file 99\ntotal_inactive_file 96000\n")
    cgroups = Cgroups(tmp_path, "memory.limit_in_bytes")
    assert cgroups.usage(group) == (None, 4_000_000.0)
    found = sample(Target("inst-1", KEY, os.getpid(), group), cgroups)
    assert found.memory_bytes == 4_000_000.0, "memory from the group"
    assert found.cpu_s is not None
    assert found.cpu_s > 0, "CPU from /proc: a v1 memory group keeps none"
    assert found.incarnation == os.getpid()


def test_a_group_that_went_falls_back_to_proc(tmp_path: Path) -> None:
    found = sample(Target("inst-1", KEY, os.getpid(), tmp_path / "gone"), Cgroups(tmp_path, "memory.max"))
    assert found.cpu_s is not None
    assert found.memory_bytes is not None


def test_the_meter_rates_a_busy_process_per_version() -> None:
    """The first reading is a baseline; the second rates the CPU burned in between by a spinning child."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        meter = UsageMeter()
        target = Target("inst-1", KEY, child.pid, None)
        first = meter.measure([target], None)
        assert first[KEY].cores is None
        assert first[KEY].memory_bytes is not None
        time.sleep(0.5)
        second = meter.measure([target], None)
    finally:
        child.kill()
        child.wait()
    cores = second[KEY].cores
    assert cores is not None
    assert 0.1 < cores <= 1.1  # one thread spinning on a shared machine: a good part of a core, never more
    assert meter.last is second


def test_pss_reads_are_rationed_new_instances_first_then_the_least_recently_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`smaps_rollup` costs up to a millisecond: 2 re-reads a tick here, a new instance read at once."""
    reads: list[int] = []

    def counted(pid: int) -> float:
        reads.append(pid)
        return float(pid)

    monkeypatch.setattr(usage, "proc_memory", counted)
    meter = UsageMeter(pss_reads_per_tick=2)
    targets = [Target(f"i{pid}", KEY, pid, None) for pid in (os.getpid(), 1, 2, 3, 4)]
    assert meter.measure(targets, None)[KEY].memory_bytes == float(os.getpid() + 10)
    assert len(reads) == 5, "every instance without a figure is read"
    reads.clear()
    for _ in range(2):
        assert meter.measure(targets, None)[KEY].memory_bytes == float(os.getpid() + 10), "the others' last PSS"
    assert len(reads) == 4
    assert len(set(reads)) == 4, "the least recently read first: no instance read twice before the rest"
    reads.clear()
    meter.measure([*targets, Target("new", KEY, 7, None)], None)
    assert reads.count(7) == 1
    assert len(reads) == 3
