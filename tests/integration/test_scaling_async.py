"""An async backlog scales its function through a real `nest up`, and a paused backlog does not.

Due tasks that the function's `async.concurrency` would let start count as queued work of its live version, and
the dispatcher sends them through the gateway, where those beyond the ready slots wait in the activator
(docs/autoscaling.md, metrics). Tasks beyond `async.concurrency` do not count: the function could not use more
instances for them. A paused function's backlog is not dispatched and asks for no instances.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

SLOW = """\
import time


def handle(request):
    time.sleep(0.3)
    return {"n": request.json()["n"]}
"""
# One request per instance, six dispatched at once: six instances are wanted within a tick or two (queue or panic).
MANIFEST = "concurrency: 1\nasync: {concurrency: 6}\nscaling: {max: 8, initial_scale: 0, scale_to_zero_grace: 2s}\n"
TASKS = 36


def submit(platform: Platform, name: str, count: int) -> list[str]:
    with platform.http() as http:
        responses = [http.post(f"/async-function/{name}", json={"n": n}) for n in range(count)]
    assert {response.status_code for response in responses} == {202}
    return [response.json()["call_id"] for response in responses]


def scaling_of(platform: Platform, name: str) -> dict[str, object]:
    scaling = platform.describe(name)["scaling"]
    assert isinstance(scaling, dict)
    return scaling


def test_a_backlog_scales_its_function_on_queued_work_and_back_to_zero(platform: Platform) -> None:
    platform.deploy("backlogged", SLOW, MANIFEST)
    calls = submit(platform, "backlogged", TASKS)
    peak = 0
    deadline = time.monotonic() + 20
    while peak < 4 and time.monotonic() < deadline:
        peak = max(peak, len(platform.describe("backlogged")["instances"]))  # type: ignore[arg-type]
        time.sleep(0.1)
    decisions = scaling_of(platform, "backlogged")["decisions"]
    assert peak >= 4, f"the backlog did not scale its function: {decisions}"
    assert all(decision["desired"] <= 8 for decision in decisions)  # type: ignore[attr-defined]
    results = [platform.wait_final(call, timeout_s=60) for call in calls]
    assert {result["status"] for result in results} == {"succeeded"}, "every accepted task ran"
    platform.wait_for(
        lambda: not platform.describe("backlogged")["instances"],
        timeout_s=30,
        what="the drained function to scale back to zero",
    )


def test_a_paused_backlog_asks_for_no_instances(platform: Platform) -> None:
    platform.deploy("held", SLOW, MANIFEST)
    platform.cli("async", "pause", "held")
    calls = submit(platform, "held", 12)
    time.sleep(3.0)  # three autoscaler ticks with twelve tasks waiting
    assert platform.describe("held")["instances"] == [], "nothing is dispatched, so nothing is started"
    assert all(decision["desired"] == 0 for decision in scaling_of(platform, "held")["decisions"])  # type: ignore[attr-defined]
    platform.cli("async", "resume", "held")
    results = [platform.wait_final(call, timeout_s=60) for call in calls]
    assert {result["status"] for result in results} == {"succeeded"}
