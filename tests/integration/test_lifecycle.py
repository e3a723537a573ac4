"""Scaling from zero and back, crash replacement, restart on the same data directory, clean shutdown."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from tests.integration.conftest import start_platform, stop_platform

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Platform

QUICK_SCALING = "scaling: {scale_down_delay: 0s, scale_to_zero_grace: 1s}\n"


def instances(platform: Platform, name: str) -> list[dict[str, object]]:
    found = platform.describe(name)["instances"]
    assert isinstance(found, list)
    return found


def test_a_function_scales_to_zero_after_its_grace_and_back_on_the_next_request(platform: Platform) -> None:
    platform.deploy("napper", "def handle(request):\n    return 'awake'\n", QUICK_SCALING)
    with platform.http() as http:
        assert http.get("/function/napper").text == "awake"
    assert len(instances(platform, "napper")) == 1
    platform.wait_for(lambda: not instances(platform, "napper"), what="scale to zero")
    decisions = platform.describe("napper")["scaling"]["decisions"]  # type: ignore[index]
    assert any("zero" in d["reason"] or "idle" in d["reason"] for d in decisions)
    with platform.http() as http:
        assert http.get("/function/napper").text == "awake"


def test_min_instances_are_kept_without_traffic(platform: Platform) -> None:
    platform.deploy("reserved", "def handle(request):\n    return 'here'\n", "scaling: {min: 2}\n")
    platform.wait_for(
        lambda: sum(1 for i in instances(platform, "reserved") if i["state"] == "ready") == 2,
        what="two reserved instances",
    )


def test_a_crashed_instance_is_replaced(platform: Platform) -> None:
    platform.deploy(
        "crashy",
        "import os\n\ndef handle(request):\n    return {'pid': os.getpid()}\n",
        "scaling: {min: 1}\n",
    )
    with platform.http() as http:
        platform.wait_for(lambda: http.get("/function/crashy").status_code == 200, what="crashy up")
        pid = http.get("/function/crashy").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        platform.wait_for(
            lambda: (
                http.get("/function/crashy").status_code == 200 and http.get("/function/crashy").json()["pid"] != pid
            ),
            what="a replacement instance",
        )


def test_a_second_nest_up_finds_its_functions_and_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    first = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        first.deploy("survivor", "def handle(request):\n    return 'still here'\n")
        with first.http() as http:
            assert http.get("/function/survivor").text == "still here"
    finally:
        leftovers = stop_platform(first)
    assert leftovers == []

    second = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        with second.http() as http:
            assert http.get("/function/survivor").text == "still here"
    finally:
        assert stop_platform(second) == []


def test_a_hung_instance_fails_its_liveness_ping_and_is_replaced(platform: Platform) -> None:
    platform.deploy(
        "hangs",
        "import os, time\n\nasync def handle(request):\n"
        "    if request.query.get('hang'):\n        time.sleep(3600)  # blocks the instance's event loop\n"
        "    return {'pid': os.getpid()}\n",
        "scaling: {min: 1}\ntimeout: 15m\n",
    )
    with platform.http() as http:
        platform.wait_for(lambda: http.get("/function/hangs").status_code == 200, what="hangs up")
        pid = http.get("/function/hangs").json()["pid"]
        hung = http.get("/function/hangs", params={"hang": "1"}, timeout=30)
        assert hung.status_code == 502  # killed under the request: the gateway says the instance went away
        platform.wait_for(
            lambda: http.get("/function/hangs", timeout=30).json().get("pid") not in {None, pid},
            what="a healthy replacement",
        )


SLOW = """
import asyncio

async def handle(request):
    await asyncio.sleep(float(request.query.get("s", "0")))
    return "VERSION"
"""


def test_a_redeploy_drains_requests_in_flight_on_the_old_version(platform: Platform) -> None:
    import threading

    platform.deploy("drainer", SLOW.replace("VERSION", "v1"), "timeout: 60s\n")
    results: list[str] = []
    with platform.http() as http:
        assert http.get("/function/drainer").text == "v1"
        slow = threading.Thread(target=lambda: results.append(http.get("/function/drainer", params={"s": "2"}).text))
        slow.start()
        platform.wait_for(lambda: _gauge(platform, "drainer")["in_flight"], what="the slow request in flight")
        platform.deploy("drainer", SLOW.replace("VERSION", "v2"), "timeout: 60s\n")
        assert http.get("/function/drainer").text == "v2"
        slow.join(30)
    assert results == ["v1"], "the request on the old version finished before its instance stopped"


def test_ctrl_c_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    import threading

    running = start_platform(tmp_path / "data", tmp_path / "work")
    results: list[int] = []
    try:
        running.deploy("patient", SLOW.replace("VERSION", "done"), "timeout: 60s\n")
        with running.http() as http:
            assert http.get("/function/patient").text == "done"
            slow = threading.Thread(
                target=lambda: results.append(http.get("/function/patient", params={"s": "1.5"}).status_code)
            )
            slow.start()
            running.wait_for(lambda: _gauge(running, "patient").get("in_flight"), what="the request in flight")
            leftovers = stop_platform(running)
            slow.join(30)
    finally:
        if running.process.poll() is None:
            stop_platform(running)
    assert results == [200]
    assert leftovers == []


def _gauge(platform: Platform, function: str) -> dict[str, float]:
    """In-flight requests of a function, read from /metrics."""
    with platform.http() as http:
        text = http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nest_gateway_in_flight{") and f'function="{function}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return {"in_flight": total}
