"""`nest up --metrics-grpc`: a real platform serves its gateway traffic over gRPC, read by `GrpcMetricsSource`."""

from __future__ import annotations

import asyncio
import subprocess
from typing import TYPE_CHECKING

import httpx
import pytest

from autoscaler.remote import GrpcMetricsSource
from tests.integration.conftest import NEST, free_port, start_platform, stop_platform

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from nest.contracts.model import VersionTraffic
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

SLOW = """\
import time

def handle(request):
    time.sleep(float(request.query.get("sleep", "0")))
    return "done"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, str]]:
    root = tmp_path_factory.mktemp("nest-grpc")
    address = f"127.0.0.1:{free_port()}"
    running = start_platform(root / "data", root / "work", extra=("--metrics-grpc", address))
    yield running, address
    if running.process.poll() is None:
        assert stop_platform(running) == []


def of(function: str, traffic: list[VersionTraffic]) -> list[VersionTraffic]:
    return [item for item in traffic if item.key.function == function]


async def test_traffic_sent_to_a_function_comes_back_over_grpc(served: tuple[Platform, str]) -> None:
    platform, address = served
    platform.deploy("counted", SLOW, "scaling: {min: 1}\n")
    first = GrpcMetricsSource([address], collector_id="integration-a")
    second = GrpcMetricsSource([address], collector_id="integration-b")
    try:
        await first.collect(0.0)
        await second.collect(0.0)
        async with httpx.AsyncClient(base_url=platform.url, timeout=60) as http:
            for _ in range(5):
                assert (await http.get("/function/counted")).text == "done"
            slow = asyncio.create_task(http.get("/function/counted", params={"sleep": "3"}))
            in_flight = 0
            for _ in range(100):  # until the slow request is in flight at an instance
                await asyncio.sleep(0.05)
                in_flight = sum(item.in_flight for item in of("counted", await first.collect(0.0)))
                if in_flight:
                    break
            assert in_flight == 1
            assert (await slow).text == "done"
        # Several seconds went by, so the embedded autoscaler read the same gateway several times: per-collector
        # intervals mean it took nothing away from either remote collector.
        completed, versions = 0, set()
        for _ in range(50):  # the last completion is counted just after its response is sent
            counted = of("counted", await second.collect(0.0))
            completed += sum(item.completed for item in counted)
            versions |= {item.key.version for item in counted}
            if completed >= 6:
                break
            await asyncio.sleep(0.1)
        assert completed == 6
        assert versions == {platform.describe("counted")["version"]}
        assert (first.answered, second.answered) == (1, 1)
    finally:
        await first.close()
        await second.close()


def test_a_metrics_address_that_is_taken_or_malformed_stops_nest_up_with_the_reason(
    served: tuple[Platform, str], tmp_path: Path
) -> None:
    _, taken = served
    for address, reason in [(taken, "cannot listen on"), ("nonsense", "expected HOST:PORT")]:
        result = subprocess.run(
            [NEST, "up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--metrics-grpc", address],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert reason in result.stderr
