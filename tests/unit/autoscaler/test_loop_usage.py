"""The loop's CPU, memory and QPS: the backend's usage once a tick, QPS from arrivals (virtual clocks)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from autoscaler.loop import Autoscaler
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic
from tests.fakes.metrics import FakeMetricsSource
from tests.fakes.scale_target import FakeScaleTarget
from tests.fakes.usage import FakeUsageSource

if TYPE_CHECKING:
    import pytest

KEY = VersionKey(FunctionName("f"), VersionId("v1"))
MiB = 1024**2
BASE = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=5, initial_scale=0, target_concurrency=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(spec: ScalingSpec, current: int = 1) -> tuple[Autoscaler, FakeMetricsSource, FakeUsageSource, FakeScaleTarget]:
    metrics, usage, target, clock = FakeMetricsSource(), FakeUsageSource(), FakeScaleTarget(), Clock()
    target.versions[KEY] = (spec, current)
    scaler = Autoscaler(metrics, target, tick_s=1.0, clock=clock, wall_clock=clock, usage=usage)
    return scaler, metrics, usage, target


def busy(concurrency: float = 2.0, *, arrived: int | None = None, cpu: float | None = None) -> list[VersionTraffic]:
    """Two requests in flight all tick long: against target_concurrency 100 that alone keeps one instance."""
    return [VersionTraffic(KEY, concurrency, int(concurrency), 0, 4, 1.0, cpu=cpu, arrived=arrived)]


async def test_cpu_from_the_backend_scales_what_concurrency_would_not() -> None:
    scaler, metrics, usage, target = make(replace(BASE, target_cpu=0.5))
    metrics.next = busy()
    usage.figures[KEY] = (2.0, 50 * MiB)
    await scaler.tick()
    desired, reason = target.calls[-1][1], target.calls[-1][2]
    assert desired == 6  # ceil(2.0 / (0.5 x 0.7))
    assert "cpu 2.00 cores" in reason


async def test_memory_from_the_backend_scales() -> None:
    scaler, metrics, usage, target = make(replace(BASE, target_memory=100.0 * MiB))
    metrics.next = busy()
    usage.figures[KEY] = (None, 400.0 * MiB)
    await scaler.tick()
    assert target.calls[-1][1] == 6  # ceil(400 / (100 x 0.7))
    assert "memory 400Mi" in target.calls[-1][2]


async def test_qps_is_arrivals_not_completions() -> None:
    """50 requests admitted, 4 completed (the instances are saturated): the arrivals are the demand."""
    scaler, metrics, _, target = make(replace(BASE, target_qps=10.0))
    metrics.next = busy(arrived=50)
    await scaler.tick()
    assert target.calls[-1][1] == 8  # ceil(50 / (10 x 0.7)); completions would say ceil(4 / 7) = 1
    assert "qps 50.0/s" in target.calls[-1][2]


async def test_without_arrivals_qps_falls_back_to_completions() -> None:
    scaler, metrics, _, target = make(replace(BASE, target_qps=1.0))
    metrics.next = busy()
    await scaler.tick()
    assert target.calls[-1][1] == 6  # ceil(4 completed / (1 x 0.7))


async def test_usage_is_read_once_a_tick_and_not_on_a_poke() -> None:
    scaler, _, usage, _ = make(BASE, current=0)
    scaler.poke(KEY)
    await scaler.answer_pokes()
    assert usage.calls == 0
    await scaler.tick()
    await scaler.tick()
    assert usage.calls == 2


async def test_a_version_without_traffic_still_scales_on_its_cpu() -> None:
    """Instances busy with no request in the gateway's interval (e.g. background work) still count."""
    scaler, _, usage, target = make(replace(BASE, target_cpu=1.0), current=1)
    usage.figures[KEY] = (1.5, None)
    await scaler.tick()
    assert target.calls[-1][1] == 3  # ceil(1.5 / 0.7)


async def test_unknown_backend_figures_keep_what_the_traffic_source_carried() -> None:
    scaler, metrics, usage, target = make(replace(BASE, target_cpu=1.0))
    metrics.next = busy(cpu=2.0)
    usage.figures[KEY] = (None, None)
    await scaler.tick()
    assert target.calls[-1][1] == 3


async def test_a_failing_usage_source_leaves_decisions_on_traffic_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    scaler, metrics, usage, target = make(replace(BASE, target_cpu=0.5))
    usage.error = OSError("no /proc")
    with caplog.at_level(logging.INFO, logger="nest.autoscaler"):
        for _ in range(3):
            metrics.next = busy(concurrency=140.0)
            await scaler.tick()
        usage.error = None
        await scaler.tick()
    assert target.calls[0][1] == 2  # concurrency 140 / (100 x 0.7)
    failures = [record for record in caplog.records if "CPU and memory" in record.getMessage()]
    assert [record.levelno for record in failures] == [logging.ERROR, logging.INFO]
