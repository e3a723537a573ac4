from __future__ import annotations

import os
from typing import TYPE_CHECKING

from controller.backends.cgroups import detect

if TYPE_CHECKING:
    from pathlib import Path


def fake_v1(root: Path) -> Path:
    shared = root / "memory" / "nest"
    shared.mkdir(parents=True)
    return shared


def test_no_memory_controller_means_no_cgroups(tmp_path: Path) -> None:
    assert detect(tmp_path, owner=os.getpid()) is None


def test_groups_of_dead_platforms_are_removed_and_ours_is_created(tmp_path: Path) -> None:
    shared = fake_v1(tmp_path)
    dead = shared / "999999999"
    (dead / "inst-1").mkdir(parents=True)
    alive = shared / str(os.getppid())
    alive.mkdir()
    # a real cgroupfs populates cgroup.procs itself; here the test stands in for the kernel
    (shared / str(os.getpid())).mkdir()
    (shared / str(os.getpid()) / "cgroup.procs").write_text("")
    found = detect(tmp_path, owner=os.getpid())
    assert found is not None
    assert found.base == shared / str(os.getpid())
    assert found.limit_file == "memory.limit_in_bytes"
    assert not dead.exists(), "a dead platform's empty groups go"
    assert alive.exists(), "a live platform's groups stay"


def test_a_group_caps_memory_and_takes_the_process(tmp_path: Path) -> None:
    shared = fake_v1(tmp_path)
    (shared / str(os.getpid())).mkdir()
    (shared / str(os.getpid()) / "cgroup.procs").write_text("")
    cgroups = detect(tmp_path, owner=os.getpid())
    assert cgroups is not None
    group = cgroups.place("inst-1", 12345, 256 * 1024**2)
    assert group is not None
    assert (group / "memory.limit_in_bytes").read_text() == str(256 * 1024**2)
    assert (group / "cgroup.procs").read_text() == "12345"
    assert cgroups.limit(group, 64 * 1024**2)
    assert (group / "memory.limit_in_bytes").read_text() == str(64 * 1024**2)
