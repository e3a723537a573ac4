"""bench_scale_from_zero: request to first response for a function at zero instances, through the gateway.

Two functions with the same code, one forked from the warm pool's zygote (`pool: default`) and one started as a
fresh interpreter (`pool: none`, the platform-core baseline), are cold-started in alternation so that machine
noise hits both alike. Each cycle waits until both are back at zero (scale_to_zero_grace 0.5s), then times one
request to each; a warm request is timed too. Prints one JSON line.

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
SCALING = "scaling: {scale_down_delay: 0s, scale_to_zero_grace: 500ms}\n"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(len(ordered) * fraction) - 1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold-starts", type=int, default=30)
    args = parser.parse_args()
    cold: dict[str, list[float]] = {"pool": [], "fresh": []}
    warm: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        platform = start_platform(Path(root) / "data", Path(root) / "work")
        try:
            platform.deploy("pool", HELLO, SCALING)
            platform.deploy("fresh", HELLO, SCALING + "pool: none\n")
            with platform.http() as http:
                for _ in range(args.cold_starts):
                    for name in ("pool", "fresh"):
                        platform.wait_for(lambda n=name: not platform.describe(n)["instances"], what="zero")
                        started = time.perf_counter()
                        response = http.get(f"/function/{name}")
                        cold[name].append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200, response.text
                    started = time.perf_counter()
                    http.get("/function/pool")
                    warm.append((time.perf_counter() - started) * 1000)
        finally:
            stop_platform(platform)
    pool_p50, fresh_p50 = statistics.median(cold["pool"]), statistics.median(cold["fresh"])
    print(
        json.dumps(
            {
                "bench": "scale_from_zero",
                "cold_starts": args.cold_starts,
                "pool_cold_p50_ms": round(pool_p50, 1),
                "pool_cold_p99_ms": percentile(cold["pool"], 0.99),
                "fresh_cold_p50_ms": round(fresh_p50, 1),
                "fresh_cold_p99_ms": percentile(cold["fresh"], 0.99),
                "fresh_over_pool": round(fresh_p50 / pool_p50, 1),
                "warm_p50_ms": round(statistics.median(warm), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
