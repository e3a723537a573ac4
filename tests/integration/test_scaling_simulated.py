"""The live autoscaler agrees with the simulator: a real `nest up` under a step load, against `predict_instances`.

1 caller for 3 s, then 20 callers for 10 s (each sends a 0.5 s request as soon as its last one returned), then
none. The simulator replays the same load through the same `decide` with the function's own `ScalingSpec`; the
instances `nest describe` lists must reach the predicted peak within two ticks of the prediction and be back at
zero within two ticks of the predicted zero. The peak compared is the one the prediction holds two ticks or more.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from typing import TYPE_CHECKING

import pytest

from autoscaler.simulation.model import predict_instances
from autoscaler.simulation.traces import step_load
from nest.contracts.manifest import parse_manifest

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

CODE = "import time\n\ndef handle(request):\n    time.sleep(0.5)\n    return 'ok'\n"
MANIFEST = "concurrency: 4\nscaling: {scale_down_delay: 2s, scale_to_zero_grace: 4s, initial_scale: 0}\n"
BEFORE_S, STEP_S, CALLERS, REQUEST_S = 3.0, 10.0, 20, 0.5
TICKS_ALLOWED_S = 2.0
SAMPLE_S = 0.5
"""Slack for sampling: `nest describe` is polled every ~0.3 s, slower on a busy machine."""


def drive(platform: Platform, ended: list[float], *, stop_at: float, start_at: float) -> None:
    with platform.http() as http:
        while time.monotonic() < start_at:
            time.sleep(0.01)
        while time.monotonic() < stop_at:
            assert http.get("/function/stepped").status_code == 200
    ended.append(time.monotonic())


def test_instances_follow_the_simulated_prediction(platform: Platform) -> None:
    platform.deploy("stepped", CODE, MANIFEST)
    spec = parse_manifest(f"name: stepped\n{MANIFEST}").scaling_spec()
    trace = step_load(1, CALLERS, at_s=BEFORE_S, for_s=STEP_S, request_s=REQUEST_S)
    ticks = predict_instances(spec, trace, concurrency=4, start_latency_s=0.05, horizon_s=40.0)
    # The peak the prediction holds for two ticks or more: a one-tick transient is the open-loop trace's queue
    # (its callers keep arriving while they wait), which closed-loop callers never build, and the instant queue
    # term is not held (docs/autoscaling.md).
    held = [(first.time, min(first.current, second.current)) for first, second in pairwise(ticks)]
    peak = max(count for _, count in held)
    peak_at = min(at for at, count in held if count == peak)
    zero_at = min(tick.time for tick in ticks if tick.time > BEFORE_S + STEP_S and tick.current == 0)

    origin = time.monotonic()
    step_end = origin + BEFORE_S + STEP_S
    ended: list[float] = []
    starts = [origin] + [origin + BEFORE_S] * (CALLERS - 1)
    callers = [
        threading.Thread(target=drive, args=(platform, ended), kwargs={"start_at": start, "stop_at": step_end})
        for start in starts
    ]
    for caller in callers:
        caller.start()
    seen: list[tuple[float, int]] = []
    while time.monotonic() < origin + zero_at + 4 * TICKS_ALLOWED_S:
        instances = platform.describe("stepped")["instances"]
        assert isinstance(instances, list)
        seen.append((time.monotonic() - origin, len(instances)))
        if seen[-1][0] > zero_at and seen[-1][1] == 0:
            break
        time.sleep(0.2)
    for caller in callers:
        caller.join(timeout=30)

    predicted = [(tick.time, tick.current) for tick in ticks]
    reached = [at for at, count in seen if count >= peak]
    assert reached, f"never reached the predicted {peak} instances: {seen}"
    assert reached[0] <= peak_at + TICKS_ALLOWED_S + SAMPLE_S, (predicted, seen)
    # The last callers finish their last request after `step_end`: zero is predicted from the load's real end.
    late_s = max(ended) - step_end
    back = [at for at, count in seen if at > BEFORE_S + STEP_S and count == 0]
    assert back, f"not back at zero by {zero_at + 4 * TICKS_ALLOWED_S:.0f}s: {seen}"
    assert zero_at - TICKS_ALLOWED_S <= back[0] <= zero_at + late_s + TICKS_ALLOWED_S + SAMPLE_S, (predicted, seen)
