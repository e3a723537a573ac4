"""bench_gateway: a warm hello function, direct to its instance vs through the gateway.

(a) c=1 latency p50/p99 on one keep-alive connection, direct to the instance vs through the gateway;
(b) throughput with 64 keep-alive connections, direct vs via the gateway. Targets (issue 2): added p50 <= 150 us,
added p99 <= 1 ms, gateway throughput >= 0.35x direct (stretch 0.5x). Prints one JSON line.

"Direct" is measured two ways: over the instance's own Unix socket (the gateway's hop) and over TCP to a second
instance of the same code and runtime started with `--tcp-port`, because a client reaches the gateway over TCP and
loopback TCP alone costs ~40 us more per round trip than a Unix socket here. `added_*` compare like with like
(TCP to TCP); the Unix-socket figures are reported beside them.

Run: .venv/bin/python -m tests.bench.bench_gateway [--requests 3000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.loadgen import Target, latency, throughput
from tests.integration.conftest import free_port, start_platform, stop_platform

HELLO = """
def handle(request):
    name = request.json().get("name", "world")
    return {"hello": name}
"""


def start_tcp_instance(code_dir: Path, port: int, root: Path) -> subprocess.Popen[bytes]:
    """The same runtime and code as the deployed instance, listening on TCP too."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "runtime", "--socket", str(root / "direct.sock"), "--code-dir", str(code_dir)),
            *("--function", "hello", "--version", "direct", "--instance", "direct-1", "--concurrency", "100"),
            *("--tcp-port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "MALLOC_ARENA_MAX": "2"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/__nest__/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the direct instance did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        platform = start_platform(Path(root) / "data", Path(root) / "work")
        try:
            platform.deploy("hello", HELLO, "scaling: {min: 1, max: 1}\nconcurrency: 100\n")
            platform.wait_for(
                lambda: any(i["state"] == "ready" for i in platform.describe("hello")["instances"]),  # type: ignore[union-attr]
                what="a warm instance",
            )
            instance = platform.describe("hello")["instances"][0]  # type: ignore[index]
            port = int(platform.url.rsplit(":", 1)[1])
            tcp_port = free_port()
            direct_process = start_tcp_instance(platform.work / "hello", tcp_port, Path(root))
            unix = Target("/", unix_path=instance["socket"])
            direct = Target("/", port=tcp_port)
            gateway = Target("/function/hello", port=port)
            rounds = []
            for _ in range(args.rounds):  # interleaved, so machine noise hits all alike
                rounds.append(
                    {
                        "unix": latency(unix, requests=args.requests),
                        "direct": latency(direct, requests=args.requests),
                        "gateway": latency(gateway, requests=args.requests),
                        "unix_rps": throughput(unix, duration_s=args.seconds),
                        "direct_rps": throughput(direct, duration_s=args.seconds),
                        "gateway_rps": throughput(gateway, duration_s=args.seconds),
                    }
                )
                time.sleep(0.5)
            direct_process.terminate()
            direct_process.wait(10)
        finally:
            stop_platform(platform)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    direct_p50 = median([r["direct"]["p50_us"] for r in rounds])  # type: ignore[index]
    gateway_p50 = median([r["gateway"]["p50_us"] for r in rounds])  # type: ignore[index]
    direct_p99 = median([r["direct"]["p99_us"] for r in rounds])  # type: ignore[index]
    gateway_p99 = median([r["gateway"]["p99_us"] for r in rounds])  # type: ignore[index]
    unix_p50 = median([r["unix"]["p50_us"] for r in rounds])  # type: ignore[index]
    unix_rps = median([r["unix_rps"] for r in rounds])  # type: ignore[misc]
    direct_rps = median([r["direct_rps"] for r in rounds])  # type: ignore[misc]
    gateway_rps = median([r["gateway_rps"] for r in rounds])  # type: ignore[misc]
    print(
        json.dumps(
            {
                "bench": "gateway",
                "rounds": args.rounds,
                "c1_direct_unix_p50_us": unix_p50,
                "c1_direct_p50_us": direct_p50,
                "c1_gateway_p50_us": gateway_p50,
                "c1_added_p50_us": round(gateway_p50 - direct_p50, 1),
                "c1_direct_p99_us": direct_p99,
                "c1_gateway_p99_us": gateway_p99,
                "c1_added_p99_us": round(gateway_p99 - direct_p99, 1),
                "c64_direct_unix_rps": round(unix_rps),
                "c64_direct_rps": round(direct_rps),
                "c64_gateway_rps": round(gateway_rps),
                "c64_ratio": round(gateway_rps / direct_rps, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
