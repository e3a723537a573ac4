"""bench_scale_from_zero: request to first response for a function at zero instances, through the gateway.

Each cycle waits until the function is back at zero (scale_to_zero_grace 0.5s), then times one request, which
buffers in the activator while an instance starts (fresh interpreter, no pool yet: the baseline the cold-start
issue cuts). A warm request is timed in the same run for comparison. Prints one JSON line.

Run: .venv/bin/python -m tests.bench.bench_scale_from_zero [--cold-starts 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import start_platform, stop_platform

HELLO = "def handle(request):\n    return {'hello': 'cold'}\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold-starts", type=int, default=30)
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        platform = start_platform(Path(root) / "data", Path(root) / "work")
        try:
            platform.deploy("cold", HELLO, "scaling: {scale_down_delay: 0s, scale_to_zero_grace: 500ms}\n")
            with platform.http() as http:
                for _ in range(args.cold_starts):
                    platform.wait_for(lambda: not platform.describe("cold")["instances"], what="zero instances")
                    started = time.perf_counter()
                    response = http.get("/function/cold")
                    cold.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                    started = time.perf_counter()
                    http.get("/function/cold")
                    warm.append((time.perf_counter() - started) * 1000)
        finally:
            stop_platform(platform)
    cold.sort()
    print(
        json.dumps(
            {
                "bench": "scale_from_zero",
                "cold_starts": len(cold),
                "cold_p50_ms": round(statistics.median(cold), 1),
                "cold_p99_ms": round(cold[max(0, int(len(cold) * 0.99) - 1)], 1),
                "cold_max_ms": round(cold[-1], 1),
                "warm_p50_ms": round(statistics.median(warm), 2),
                "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
