"""Instances forked from the warm pool's zygote: served like fresh ones, isolated from the platform, and still
served when the zygote dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

PROBE = """
import os, sys

def handle(request):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "preloaded": "starlette.applications" in sys.modules,
        "leak": os.environ.get("NEST_LEAK_CHECK"),
        "mine": os.environ.get("MINE"),
        "cwd": os.getcwd(),
    }
"""


def zygote_pids(platform: Platform) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if name == "nest-zygote" and int(stat[1]) == platform.process.pid:
                found.append(int(entry.name))
    return found


def test_pool_and_fresh_instances_serve_alike_and_see_only_their_environment(platform: Platform) -> None:
    platform.deploy("pooled", PROBE, "env: {MINE: pooled}\n")
    platform.deploy("fresh", PROBE, "env: {MINE: fresh}\npool: none\n")
    with platform.http() as http:
        pooled = http.get("/function/pooled").json()
        fresh = http.get("/function/fresh").json()
    assert pooled["preloaded"] is True, "the pool's preloads are already imported"
    assert fresh["preloaded"] is False
    for seen, mine in ((pooled, "pooled"), (fresh, "fresh")):
        assert seen["mine"] == mine
        assert seen["leak"] is None, "nothing of the platform's environment reaches the function"
        assert seen["ppid"] == platform.process.pid, "instances are the platform's children (it is their reaper)"
        assert seen["cwd"].endswith(os.sep + "instances" + os.sep + os.path.basename(seen["cwd"]))


def test_instances_survive_a_zygote_crash_and_the_pool_comes_back(platform: Platform) -> None:
    platform.deploy("survives", PROBE, "scaling: {min: 1, max: 2}\n")
    with platform.http() as http:
        platform.wait_for(lambda: http.get("/function/survives").status_code == 200, what="survives up")
        before = http.get("/function/survives").json()["pid"]
        for pid in zygote_pids(platform):
            os.kill(pid, signal.SIGKILL)
        assert http.get("/function/survives").status_code == 200
        os.kill(before, 0)  # the instance forked by the dead zygote is still alive
    platform.deploy("after-crash", PROBE)
    with platform.http() as http:
        after = http.get("/function/after-crash")
    assert after.status_code == 200
    assert after.json()["preloaded"] is True, "a new zygote was started for the next cold start"


def test_a_cold_start_reports_its_phases(platform: Platform) -> None:
    platform.deploy("timed", PROBE)
    with platform.http() as http:
        cold = http.get("/function/timed")
        warm = http.get("/function/timed")
        metrics = http.get("/metrics").text
    timing = cold.headers["server-timing"]
    assert timing.startswith("activator;dur=")
    assert "claim;dur=" in timing or "fork;dur=" in timing, timing
    assert "init;dur=" in timing
    assert "server-timing" not in warm.headers, "a request that did not wait carries no timing"
    starts = platform.describe("timed")["cold_starts"]
    assert isinstance(starts, list)
    assert "init" in starts[0]["phases_ms"]
    assert 'nest_instance_start_seconds_count{phase="init"}' in metrics


HEAVY = """
import sys

PRELOADED = "pydantic" in sys.modules  # before this module imports it
import pydantic


class Item(pydantic.BaseModel):
    name: str


def handle(request):
    return {"preloaded": PRELOADED, "item": Item(name="x").model_dump()}
"""


def test_a_declared_pool_preloads_its_modules_and_unknown_pools_are_refused(tmp_path: Path) -> None:
    from tests.integration.conftest import start_platform, stop_platform

    running = start_platform(tmp_path / "data", tmp_path / "work", extra=("--pool", "models=pydantic"))
    try:
        running.deploy("with-models", HEAVY, "pool: models\n")
        running.deploy("without", HEAVY)
        with running.http() as http:
            assert http.get("/function/with-models").json()["preloaded"] is True
            assert http.get("/function/without").json() == {"preloaded": False, "item": {"name": "x"}}
        refused = running.cli("deploy", str(running.write_function("typo", HEAVY, "pool: modles\n")), check=False)
        assert refused.returncode == 1
        assert "unknown pool 'modles'" in refused.stderr
        assert "models" in refused.stderr
    finally:
        assert stop_platform(running) == []
