"""bench_cold_start: scale-from-zero to first response through the gateway, by how the instance starts.

(a) `pool: none`: a fresh interpreter imports the runtime; (b) the default warm pool: a fork of the zygote;
(c) a function importing a heavy module (httpx, ~150 ms of imports here), from the default pool (the import is
paid at each cold start) and from a pool that preloads it (`nest up --pool http=httpx`). Import time removed by the
preload is read from the runtime's own `init` phase in the `Server-Timing` header: (c-default - b) vs
(c-preloaded - b). Variants are interleaved so machine noise hits all alike. Prints one JSON line.

Targets (issue 4): (b) p50 <= 10 ms, p99 <= 30 ms; (b) >= 20x faster than (a); preloading removes >= 90% of the
import time.

The client's collector is off during each timed request (as `timeit` does): with it on, a collection of this
process's heap (~20 ms here) landed inside one or two of the 50 requests and made the p99 (measured: pool p99 25-35
ms with it, 11-15 ms without, the platform's own timings unchanged).

Run: .venv/bin/python -m tests.bench.bench_cold_start [--cold-starts 50]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import start_platform, stop_platform

HELLO = "def handle(request):\n    return {'hello': 'cold'}\n"
HEAVY = """
import httpx


def handle(request):
    return {"httpx": httpx.__version__}
"""
SCALING = "scaling: {scale_down_delay: 0s, scale_to_zero_grace: 300ms}\n"
VARIANTS = {
    "fresh": (HELLO, "pool: none\n"),
    "pool": (HELLO, ""),
    "heavy-default": (HEAVY, ""),
    "heavy-preloaded": (HEAVY, "pool: http\n"),
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(len(ordered) * fraction) - 1)], 1)


def init_ms(server_timing: str) -> float:
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == "init":
            return float(duration)
    raise ValueError(f"no init phase in {server_timing!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold-starts", type=int, default=50)
    args = parser.parse_args()
    total: dict[str, list[float]] = {name: [] for name in VARIANTS}
    init: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as root:
        platform = start_platform(Path(root) / "data", Path(root) / "work", extra=("--pool", "http=httpx"))
        try:
            for name, (code, manifest) in VARIANTS.items():
                platform.deploy(name, code, SCALING + manifest)
            with platform.http() as http:
                for _ in range(args.cold_starts):
                    for name in VARIANTS:
                        platform.wait_for(lambda n=name: not platform.describe(n)["instances"], what="zero")
                        gc.disable()  # as `timeit` does: this client's own collections are not the platform's time
                        started = time.perf_counter()
                        response = http.get(f"/function/{name}")
                        total[name].append((time.perf_counter() - started) * 1000)
                        gc.enable()
                        assert response.status_code == 200, response.text
                        init[name].append(init_ms(response.headers["server-timing"]))
        finally:
            stop_platform(platform)
    p50 = {name: statistics.median(values) for name, values in total.items()}
    base_init = statistics.median(init["pool"])
    import_default = statistics.median(init["heavy-default"]) - base_init
    import_preloaded = statistics.median(init["heavy-preloaded"]) - base_init
    result: dict[str, object] = {"bench": "cold_start", "cold_starts": args.cold_starts}
    for name in VARIANTS:
        result[f"{name}_p50_ms"] = round(p50[name], 1)
        result[f"{name}_p99_ms"] = percentile(total[name], 0.99)
        result[f"{name}_init_p50_ms"] = round(statistics.median(init[name]), 1)
    result["fresh_over_pool"] = round(p50["fresh"] / p50["pool"], 1)
    result["heavy_import_ms"] = round(import_default, 1)
    result["heavy_import_with_preload_ms"] = round(import_preloaded, 1)
    result["import_time_removed"] = round(1 - import_preloaded / import_default, 3) if import_default > 0 else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
