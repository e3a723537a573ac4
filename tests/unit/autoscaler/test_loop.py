from __future__ import annotations

import asyncio

import pytest

from autoscaler.loop import Autoscaler
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic
from tests.fakes.metrics import FakeMetricsSource
from tests.fakes.scale_target import FakeScaleTarget

KEY = VersionKey(FunctionName("f"), VersionId("v1"))
SPEC = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Autoscaler, FakeMetricsSource, FakeScaleTarget, Clock]:
    metrics, target, clock = FakeMetricsSource(), FakeScaleTarget(), Clock()
    target.versions[KEY] = (SPEC, 0)
    return Autoscaler(metrics, target, tick_s=1.0, clock=clock), metrics, target, clock


async def test_a_poke_decides_at_once_for_a_version_at_zero() -> None:
    scaler, _, target, _ = make()
    scaler.poke(KEY)
    await scaler.answer_pokes()
    assert target.calls[-1][1] == 1
    assert target.calls[-1][2].startswith("activate")


async def test_ticks_scale_up_then_to_zero_after_the_grace() -> None:
    scaler, metrics, target, clock = make()
    metrics.next = [VersionTraffic(KEY, 20.0, 20, 0, 5, 1.0)]
    await scaler.tick()
    assert target.calls[-1][1] == 3
    for _ in range(4):
        clock.now += 1
        await scaler.tick()
    assert target.versions[KEY][1] == 1  # inside the grace
    clock.now += 2
    await scaler.tick()
    assert target.versions[KEY][1] == 0
    history = scaler.recent_decisions(KEY)
    assert [desired for _, desired, _ in history] == [3, 1, 0]


async def test_versions_that_disappear_are_forgotten() -> None:
    scaler, _, target, _ = make()
    await scaler.tick()
    del target.versions[KEY]
    await scaler.tick()
    assert scaler.recent_decisions(KEY) == []


async def test_a_failing_tick_does_not_stop_the_loop() -> None:
    scaler, metrics, target, _ = make()
    failures = []

    def broken(now: float) -> list[VersionTraffic]:
        failures.append(now)
        raise RuntimeError("metrics unavailable")

    metrics.collect = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await scaler.tick()
    loop_task = asyncio.create_task(scaler.run())
    scaler.poke(KEY)
    await asyncio.sleep(0.01)
    assert target.calls, "pokes are still answered after a failed tick"
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
