"""CPU and memory scaling through a real `nest up`: the local backend's figures drive real decisions.

Each function is built so that the concurrency metric alone keeps one instance (high `concurrency`, few
callers), and only the resource target can explain a scale-up. The machine is shared and has two cores, so the
assertions are on what drove the decision and on a count above one, never on exact counts or timings.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

BURN = """\
import time


def handle(request):
    end = time.process_time() + 0.2  # 0.2 s of CPU, however busy the machine is
    while time.process_time() < end:
        pass
    return "burned"
"""
# concurrency 50: 3 callers want ceil(3 / (50 x 0.7)) = 1 instance; one busy instance (up to a core, its GIL)
# wants ceil(cores / (0.5 x 0.7)) = 2 or more from 0.36 cores on.
BURN_MANIFEST = "concurrency: 50\nscaling: {target_cpu: 0.5, max: 4, scale_to_zero_grace: 5s}\n"

HOLD = """\
HELD = []


def handle(request):
    if len(HELD) < 6:
        HELD.append(b"\\x01" * (8 * 1024 * 1024))  # written, so resident: a cache that grows with use
    return {"held_mib": 8 * len(HELD)}
"""
# 48 MiB held against 32Mi x 0.7 per instance wants 3; concurrency alone (one caller) wants 1.
HOLD_MANIFEST = "concurrency: 50\nscaling: {target_memory: 32Mi, max: 3, scale_to_zero_grace: 5s}\n"


def load(platform: Platform, path: str, stop: threading.Event) -> None:
    with platform.http() as http:
        while not stop.is_set():
            assert http.get(path).status_code == 200


def driven_decision(platform: Platform, name: str, metric: str, *, callers: int, timeout_s: float) -> dict[str, object]:
    """Load `name` with `callers` threads until a decision scales it above one instance on `metric`."""
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(platform, f"/function/{name}", stop)) for _ in range(callers)]
    for thread in threads:
        thread.start()
    found: dict[str, object] | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while found is None and time.monotonic() < deadline:
            scaling = platform.describe(name)["scaling"]
            assert isinstance(scaling, dict)
            for decision in scaling["decisions"]:
                if decision["desired"] > 1 and f" {metric} " in decision["reason"]:
                    found = decision
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert found is not None, f"no decision scaled {name} on {metric}: {platform.describe(name)['scaling']}"
    return found


def test_a_cpu_bound_function_scales_on_cpu(platform: Platform) -> None:
    platform.deploy("burner", BURN, BURN_MANIFEST)
    decision = driven_decision(platform, "burner", "cpu", callers=3, timeout_s=30)
    assert "cores" in str(decision["reason"])
    usage = platform.describe("burner")["scaling"]
    assert isinstance(usage, dict)
    assert usage["usage"]["instances"] >= 1, "nest describe shows the figures the decision used"


def test_a_function_holding_memory_scales_on_memory(platform: Platform) -> None:
    platform.deploy("holder", HOLD, HOLD_MANIFEST)
    decision = driven_decision(platform, "holder", "memory", callers=1, timeout_s=30)
    assert "Mi" in str(decision["reason"])
