from __future__ import annotations

import asyncio

import pytest

from autoscaler.decision import Mode
from autoscaler.loop import Autoscaler
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic
from tests.fakes.metrics import FakeMetricsSource
from tests.fakes.scale_target import FakeScaleTarget

KEY = VersionKey(FunctionName("f"), VersionId("v1"))
SPEC = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=5, initial_scale=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class AsyncMetricsSource(FakeMetricsSource):
    """The same fake behind `async def collect`, as a remote (gRPC) source is."""

    async def collect(self, now: float) -> list[VersionTraffic]:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().collect(now)


def make(
    spec: ScalingSpec = SPEC, current: int = 0, metrics: FakeMetricsSource | None = None
) -> tuple[Autoscaler, FakeMetricsSource, FakeScaleTarget, Clock]:
    metrics, target, clock = metrics or FakeMetricsSource(), FakeScaleTarget(), Clock()
    target.versions[KEY] = (spec, current)
    return Autoscaler(metrics, target, tick_s=1.0, clock=clock, wall_clock=clock), metrics, target, clock


async def test_a_poke_decides_at_once_for_a_version_at_zero() -> None:
    scaler, _, target, _ = make()
    scaler.poke(KEY)
    await scaler.answer_pokes()
    assert target.calls[-1][1] == 1
    assert target.calls[-1][2].startswith("activate")


async def test_a_poke_at_zero_starts_what_the_waiting_requests_need_not_one() -> None:
    scaler, _, target, _ = make(ScalingSpec(target_concurrency=2, initial_scale=0))
    for waiting in range(1, 9):  # a burst of 8: one poke each, answered once the burst is in
        scaler.poke(KEY, waiting)
    await scaler.answer_pokes()
    assert target.calls[-1][1] == 4
    assert target.calls[-1][2].startswith("activate: 8 request(s) waiting, 0 instances → 4")


async def test_a_poke_while_instances_start_adds_only_what_they_cannot_take() -> None:
    scaler, _, target, _ = make(ScalingSpec(target_concurrency=2, initial_scale=0), current=2)
    target.starting[KEY] = 2
    scaler.poke(KEY, 4)
    await scaler.answer_pokes()
    assert target.calls == [], "2 starting instances take 4 waiting requests"
    scaler.poke(KEY, 7)
    await scaler.answer_pokes()
    assert target.calls[-1][1] == 4
    target.starting[KEY] = 1
    scaler.poke(KEY, 12)
    await scaler.answer_pokes()
    assert target.calls[-1][1] == 4, "an instance is ready: the ticks decide from here"


async def test_a_poke_adds_no_time_to_the_windows() -> None:
    scaler, metrics, target, clock = make()
    scaler.poke(KEY)
    await scaler.answer_pokes()
    metrics.next = [VersionTraffic(KEY, 7.0, 7, 0, 3, 1.0)]
    clock.now += 1
    await scaler.tick()
    assert "concurrency 7.0" in target.calls[-1][2], "the poke's point observation did not dilute the average"


@pytest.mark.parametrize("source", [FakeMetricsSource, AsyncMetricsSource])
async def test_ticks_scale_up_then_to_zero_after_the_grace(source: type[FakeMetricsSource]) -> None:
    scaler, metrics, target, clock = make(metrics=source())
    metrics.next = [VersionTraffic(KEY, 20.0, 20, 0, 5, 1.0)]
    await scaler.tick()
    assert target.calls[-1][1] == 3
    for _ in range(4):
        clock.now += 1
        await scaler.tick()
    assert target.versions[KEY][1] >= 1  # inside the grace
    for _ in range(2):  # past the grace; max_scale_down_rate 2 halves 3 to 1, then 0
        clock.now += 1
        await scaler.tick()
    assert target.versions[KEY][1] == 0
    history = scaler.recent_decisions(KEY)
    assert history[0][1] == 3
    assert history[-1][1] == 0


async def test_the_mode_reaches_the_target_with_every_decision() -> None:
    scaler, metrics, target, _ = make(current=1)
    metrics.next = [VersionTraffic(KEY, 30.0, 30, 0, 5, 1.0)]
    await scaler.tick()
    assert scaler.mode(KEY) is Mode.PANIC
    assert target.modes[KEY] == "panic"
    assert target.calls[-1][2].startswith("panic: 6 s concurrency 30.0 / (10 × 0.7) → 5 ≥ 2 × 1 instance(s)")


async def test_a_restarted_autoscaler_keeps_the_instances_it_finds() -> None:
    spec = ScalingSpec(scale_down_delay_s=0, scale_to_zero_grace_s=0, initial_scale=0)
    scaler, _, target, clock = make(spec, current=4)
    desired = []
    for _ in range(8):
        await scaler.tick()
        desired.append(target.calls[-1][1])
        clock.now += 1
    assert desired[:6] == [4] * 6, "no scale-down before a panic window of fresh metrics"
    assert desired[-1] < 4
    assert target.calls[0][2].startswith("found: keeps the")


async def test_a_version_absent_from_the_traffic_had_none_since_its_last_tick() -> None:
    spec = ScalingSpec(scale_down_delay_s=0, initial_scale=0)
    scaler, metrics, target, clock = make(spec, current=1)
    metrics.next = [VersionTraffic(KEY, 5.0, 5, 0, 5, 1.0)]
    await scaler.tick()
    clock.now += 3  # a slow tick: the quiet interval is 3 s, so the average is (5 * 1 + 0 * 3) / 4
    await scaler.tick()
    assert "concurrency 1.2" in target.calls[-1][2]


async def test_versions_that_disappear_are_forgotten() -> None:
    scaler, _, target, _ = make()
    await scaler.tick()
    del target.versions[KEY]
    await scaler.tick()
    assert scaler.recent_decisions(KEY) == []
    assert scaler.mode(KEY) is Mode.STABLE


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


async def test_panic_compares_the_demand_with_the_ready_instances_only() -> None:
    scaler, metrics, target, _ = make(current=3)
    target.starting[KEY] = 2  # one ready: 15 in flight wants 3 ≥ 2 × 1, a panic although 3 exist
    metrics.next = [VersionTraffic(KEY, 15.0, 15, 0, 5, 1.0)]
    await scaler.tick()
    assert scaler.mode(KEY) is Mode.PANIC
    assert "→ 3 ≥ 2 × 1 instance(s)" in target.calls[-1][2]
