"""Instances forked from the warm pool's zygote: served like fresh ones, isolated from the platform, and still
served when the zygote dies."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
        "stdio_copies": stdio_copies(),
    }


def stdio_copies():
    # descriptors past stdio pointing where stdin or stdout do (/dev/null, the log): copies of the parent's, but
    # for one /dev/null libuv opens itself (a descriptor it keeps in reserve for when the process runs out)
    targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2
               and os.path.exists(f"/proc/self/fd/{fd}")]
    log, null = os.readlink("/proc/self/fd/1"), os.readlink("/proc/self/fd/0")
    return targets.count(log) + max(0, targets.count(null) - 1)
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
    assert (pooled["stdio_copies"], fresh["stdio_copies"]) == (0, 0), "no copy of the parent's descriptors"
    assert pooled["preloaded"] is True, "the pool's preloads are already imported"
    assert fresh["preloaded"] is False
    for seen, mine in ((pooled, "pooled"), (fresh, "fresh")):
        assert seen["mine"] == mine
        assert seen["leak"] is None, "nothing of the platform's environment reaches the function"
        assert seen["ppid"] == platform.process.pid, "instances are the platform's children (it is their reaper)"
        assert seen["cwd"].endswith(os.sep + "instances" + os.sep + os.path.basename(seen["cwd"]))


def test_instances_of_a_dead_zygote_keep_serving_until_replaced_and_the_pool_comes_back(platform: Platform) -> None:
    platform.deploy("survives", PROBE, "scaling: {min: 1, max: 2}\n")
    with platform.http() as http:
        platform.wait_for(lambda: http.get("/function/survives").status_code == 200, what="survives up")
        before = http.get("/function/survives").json()["pid"]
        for pid in zygote_pids(platform):
            os.kill(pid, signal.SIGKILL)
        statuses = []
        for _ in range(2000):
            response = http.get("/function/survives")
            statuses.append(response.status_code)
            if response.json().get("pid") != before:
                break
        assert set(statuses) == {200}, "the instance of the dead zygote served until its replacement was ready"
        assert response.json()["pid"] != before, "it was replaced by an instance of the new zygote"
        assert response.json()["preloaded"] is True
        platform.wait_for(lambda: not _alive(before), what="the replaced instance drained and gone")
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


CAPTURING = """
import os
from tests.integration.preloads import capture_env


def handle(request):
    return {"captured": sorted(capture_env.CAPTURED), "mine": os.environ.get("MINE")}
"""


def test_a_preload_imports_under_the_instances_base_environment_not_the_platforms(tmp_path: Path) -> None:
    """The platform's environment (here the conftest's NEST_LEAK_CHECK canary) never reaches a zygote, so no
    preload can capture it at import into memory every instance shares."""
    from tests.integration.conftest import start_platform, stop_platform

    pool = "capture=tests.integration.preloads.capture_env"
    running = start_platform(tmp_path / "data", tmp_path / "work", extra=("--pool", pool))
    try:
        running.deploy("capturing", CAPTURING, "pool: capture\nenv: {MINE: mine}\n")
        with running.http() as http:
            seen = http.get("/function/capturing").json()
    finally:
        assert stop_platform(running) == []
    assert "NEST_LEAK_CHECK" not in seen["captured"]
    assert set(seen["captured"]) <= {"PATH", "LANG", "MALLOC_ARENA_MAX", "PYTHONPATH", "LC_CTYPE"}, seen
    assert seen["mine"] == "mine", "the function's own environment is applied after the fork"


SLOW = """
import os, time

def handle(request):
    time.sleep(0.5)
    return {"pid": os.getpid()}
"""


def test_a_burst_for_a_cold_function_starts_what_the_autoscaler_asks_not_one_per_request(platform: Platform) -> None:
    platform.deploy("burst", SLOW, "concurrency: 10\nscaling: {max: 10}\n")
    burst = 20
    with platform.http() as http, ThreadPoolExecutor(burst) as pool:
        responses = list(pool.map(lambda _: http.get("/function/burst"), range(burst)))
    assert [response.status_code for response in responses] == [200] * burst
    served = Counter(response.json()["pid"] for response in responses)
    info = platform.describe("burst")
    started = list(info["cold_starts"])  # type: ignore[call-overload]
    asked = max(decision["desired"] for decision in info["scaling"]["decisions"])  # type: ignore[index]
    assert len(started) == asked, f"{len(started)} instances started, the autoscaler asked for {asked}"
    assert asked <= burst // 2, f"the autoscaler sizes for concurrency 10, not one per request: {asked}"
    assert len(served) <= len(started)
    assert max(served.values()) <= 10 * 2, "no instance took more than its concurrency at a time"
    assert max(served.values()) >= 7, f"the first ready instance took buffered requests up to its concurrency: {served}"


SAFETY = """
import os, random, resource, signal, sys, threading, logging, _imp

SEEN_AT_IMPORT = random.random()


def handle(request):
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    lines = [line.split(":", 2) for line in open("/proc/self/cgroup").read().splitlines()]
    cgroup = next((p for _, kinds, p in lines if "memory" in kinds.split(",")), lines[-1][2])
    memory_max = None
    for name in ("memory.max", "memory.limit_in_bytes"):
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory"):
            path = root + cgroup + "/" + name
            if os.path.exists(path):
                memory_max = open(path).read().strip()
    handlers = {name: repr(signal.getsignal(getattr(signal, name))) for name in ("SIGTERM", "SIGHUP", "SIGPIPE",
                "SIGINT", "SIGUSR1", "SIGCHLD")}
    locks_free = logging._lock.acquire(blocking=False)
    if locks_free:
        logging._lock.release()
    run_dir = os.path.dirname(os.path.dirname(os.getcwd()))
    return {
        "pid": os.getpid(),
        "random": SEEN_AT_IMPORT,
        "fds": fds,
        "handlers": handlers,
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "locks_free": locks_free and not _imp.lock_held(),
        "threads": [t.name for t in threading.enumerate()],
        "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "memory_max": memory_max,
        "zygote_sockets": [n for n in os.listdir(run_dir) if n.startswith("zygote")],
        "modules_with_state": "runtime.rehearsal" in sys.modules,
    }
"""


def test_a_forked_instance_is_specialised_safely(platform: Platform) -> None:
    platform.deploy("safe-a", SAFETY, "memory: 96Mi\n")
    platform.deploy("safe-b", SAFETY, "memory: 128Mi\n")
    with platform.http() as http:
        a = http.get("/function/safe-a").json()
        b = http.get("/function/safe-b").json()
    assert a["random"] != b["random"], "random generators are reseeded in each instance"
    for seen, name, memory in ((a, "safe-a", 96 * 1024**2), (b, "safe-b", 128 * 1024**2)):
        targets = list(seen["fds"].values())
        assert not [t for t in targets if "zygote" in t], "no descriptor of the zygote is inherited"
        logs = [t for t in targets if t.endswith(".log")]
        assert logs, targets
        assert all(t.endswith(f"{name}.log") for t in logs), f"only its own log is open: {logs}"
        files = {t for t in targets if t.startswith("/")}
        # its own code package, read-only: the archive layout maps its chunks (and mmap keeps a descriptor)
        package = {t for t in files if t.startswith(f"{platform.data_dir}/cache/") and t.endswith("/chunks.bin")}
        assert len(package) <= 1, package
        assert files - package <= {"/dev/null", *logs}, f"nothing of the platform or the zygote is open: {files}"
        assert seen["zygote_sockets"] == [], "the zygote's control socket is gone once the platform connected"
        assert seen["handlers"]["SIGPIPE"] == "<Handlers.SIG_IGN: 1>", "as in a fresh interpreter"
        assert seen["handlers"]["SIGHUP"] == "<Handlers.SIG_DFL: 0>"
        assert seen["handlers"]["SIGUSR1"] == "<Handlers.SIG_DFL: 0>"
        assert seen["blocked"] == []
        assert seen["locks_free"] is True, "no lock is inherited held"
        assert seen["core"] == 0
        capped = seen["memory_max"] == str(memory) or seen["address_space"] != -1
        assert capped, f"the function's memory limit applies: {seen['memory_max']}, {seen['address_space']}"


def pools_file(path: Path, preload: str) -> Path:
    path.write_text(f"pools:\n  models:\n    preload: [{preload}]\n    min_idle: 1\n    max_idle: 3\n")
    return path


RELOADED = """
import os, sys

PRELOADED = sorted(m for m in ("colorsys", "wave") if m in sys.modules)


def handle(request):
    return {"pid": os.getpid(), "preloaded": PRELOADED}
"""


def test_reloading_the_pools_file_replaces_instances_without_dropping_a_request(tmp_path: Path) -> None:
    from tests.integration.conftest import start_platform, stop_platform

    config = pools_file(tmp_path / "pools.yaml", "colorsys")
    running = start_platform(tmp_path / "data", tmp_path / "work", extra=("--pools", str(config)))
    statuses: list[int] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with running.http() as http:
            while not stop.is_set():
                statuses.append(http.get("/function/reloaded").status_code)

    try:
        running.deploy("reloaded", RELOADED, "pool: models\nscaling: {min: 1, max: 2}\n")
        with running.http() as http:
            before = http.get("/function/reloaded").json()
            assert before["preloaded"] == ["colorsys"]
            caller = threading.Thread(target=keep_calling)
            caller.start()
            pools_file(config, "wave")
            running.process.send_signal(signal.SIGHUP)
            running.wait_for(
                lambda: http.get("/function/reloaded").json()["preloaded"] == ["wave"],
                timeout_s=30,
                what="an instance forked by the new zygote",
            )
            stop.set()
            caller.join()
            running.wait_for(lambda: not _alive(before["pid"]), what="the old instance drained and gone")
            metrics = http.get("/metrics").text
        assert len(statuses) > 10
        assert set(statuses) == {200}, f"no request dropped during the replacement: {Counter(statuses)}"
        assert 'nest_pool_idle_instances{pool="models"}' in metrics
        assert running.cli("pools").stdout.count("models") == 1
    finally:
        stop.set()
        assert stop_platform(running) == []


def test_a_pool_added_by_a_reload_can_be_named_at_once_and_a_removed_one_no_longer(tmp_path: Path) -> None:
    from tests.integration.conftest import start_platform, stop_platform

    config = pools_file(tmp_path / "pools.yaml", "colorsys")
    running = start_platform(tmp_path / "data", tmp_path / "work", extra=("--pools", str(config)))
    try:
        directory = running.write_function("newcomer", RELOADED, "pool: science\n")
        refused = running.cli("deploy", str(directory), check=False)
        assert refused.returncode != 0
        assert "unknown pool 'science'" in refused.stderr
        config.write_text("pools:\n  science:\n    preload: [wave]\n")  # adds science, removes models
        running.process.send_signal(signal.SIGHUP)
        running.wait_for(
            lambda: running.cli("deploy", str(directory), check=False).returncode == 0,
            timeout_s=30,
            what="a deploy naming the reloaded pool accepted",
        )
        with running.http() as http:
            assert http.get("/function/newcomer").json()["preloaded"] == ["wave"]
        gone = running.write_function("latecomer", RELOADED, "pool: models\n")
        refused = running.cli("deploy", str(gone), check=False)
        assert "unknown pool 'models'" in refused.stderr, "a removed pool can no longer be named"
    finally:
        assert stop_platform(running) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):  # gone, or reaped between the two
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_nest_up_refuses_a_bad_pools_file_naming_the_field(tmp_path: Path) -> None:
    from tests.integration.conftest import NEST

    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  science:\n    min_idle: 5\n    max_idle: 2\n  web:\n    preloads: [httpx]\n")
    result = subprocess.run(
        [NEST, "up", "--pools", str(bad), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "pools.web.preloads: unknown key" in result.stderr
    assert "max_idle (2) is below min_idle (5)" in result.stderr


def test_a_platform_stopped_while_its_zygote_starts_leaves_no_scratch_directory(tmp_path: Path) -> None:
    """The zygote's rehearsal directory is the platform's to make and remove: a zygote killed during its start-up
    (nest up stopped right after it is ready to serve, before the pool is) leaves nothing in the temp directory."""
    from tests.integration.conftest import start_platform, stop_platform

    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("nest-rehearsal-*"))
    for attempt in range(2):
        platform = start_platform(tmp_path / f"data{attempt}", tmp_path / f"work{attempt}")
        assert stop_platform(platform) == []
    assert set(scratch.glob("nest-rehearsal-*")) - before == set()


def test_a_platform_killed_outright_has_its_zygotes_scratch_directory_removed_by_the_next_start(
    tmp_path: Path,
) -> None:
    from tests.integration.conftest import start_platform, stop_platform

    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("nest-rehearsal-*"))
    first = start_platform(tmp_path / "data", tmp_path / "work")
    first.wait_for(lambda: set(scratch.glob("nest-rehearsal-*")) - before, what="the zygote's scratch directory")
    (left,) = set(scratch.glob("nest-rehearsal-*")) - before
    first.process.kill()  # SIGKILL: nothing of the platform can clean up; its zygote dies with it
    first.process.wait(timeout=10)
    assert left.exists()
    second = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        second.wait_for(lambda: not left.exists(), what="the stale scratch directory removed")
    finally:
        assert stop_platform(second) == []
    assert set(scratch.glob("nest-rehearsal-*")) - before == set()
