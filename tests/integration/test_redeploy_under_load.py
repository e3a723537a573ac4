"""A redeploy under load through a real `nest up`: the new version starts with as many instances as the one it
replaces, so the load does not queue behind a single instance until the autoscaler's next tick, and no request
fails during the switch."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

SLOW = """\
import time

DELAY_S = {delay}


def handle(request):
    time.sleep(DELAY_S)
    return "ok"
"""
MANIFEST = "concurrency: 2\nscaling: {max: 8}\n"
CALLERS = 6


def drive(platform: Platform, stop: threading.Event, statuses: list[int]) -> None:
    with platform.http() as http:
        while not stop.is_set():
            statuses.append(http.post("/function/steady").status_code)


def test_a_new_version_takes_over_the_instances_of_the_one_it_replaces(platform: Platform) -> None:
    platform.deploy("steady", SLOW.format(delay=0.2), MANIFEST)
    stop, statuses = threading.Event(), list[int]()
    callers = [threading.Thread(target=drive, args=(platform, stop, statuses)) for _ in range(CALLERS)]
    for caller in callers:
        caller.start()
    try:
        platform.wait_for(
            lambda: len(platform.describe("steady")["instances"]) >= 3,  # type: ignore[arg-type]
            timeout_s=20,
            what="6 callers at concurrency 2 to scale the first version to 3 or more",
        )
        before = platform.describe("steady")
        old_version = before["version"]
        platform.deploy("steady", SLOW.format(delay=0.21), MANIFEST)
        after = platform.describe("steady")
        assert after["version"] != old_version
        takeover = [d for d in after["scaling"]["decisions"] if d["reason"].startswith("redeploy:")]  # type: ignore[index]
        assert takeover, f"no takeover decision: {after['scaling']}"
        taken = int(takeover[0]["desired"])
        assert taken >= 3
        assert f"of version {old_version}" in takeover[0]["reason"]

        def new_ones_ready() -> bool:
            instances = platform.describe("steady")["instances"]
            assert isinstance(instances, list)
            ready = [i for i in instances if i["version"] == after["version"] and i["state"] == "ready"]
            return len(ready) >= taken

        platform.wait_for(new_ones_ready, timeout_s=10, what=f"the new version's {taken} instances to be ready")
        time.sleep(1.0)  # the switch is over; keep the load a moment on the new version
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=30)
    assert statuses, "the callers ran"
    assert set(statuses) == {200}, f"a request failed during the redeploy: {sorted(set(statuses))}"
