"""WarmPools with real zygotes: claims and misses grow the idle target, a reload with new preloads and a dead
zygote each start a new generation and name the stale one, and close() leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from controller.pooling import PoolCollector, PoolsConfig, WarmPools
from nest.contracts.pools import PoolSettings

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration
ROOT = str(Path(__file__).resolve().parents[3])


async def until(condition: Callable[[], bool], *, timeout_s: float = 30.0) -> None:
    """Poll real processes (no event to wait on: the state changes in child processes and pool ticks)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def stats(pools: WarmPools, name: str) -> dict[str, object]:
    return next(vars_of(item) for item in pools.stats() if item.name == name)


def vars_of(item: object) -> dict[str, object]:
    return {slot: getattr(item, slot) for slot in item.__slots__}  # type: ignore[attr-defined]


async def test_claims_reloads_and_a_dead_zygote(tmp_path: Path) -> None:
    stale: list[tuple[str, int]] = []
    settings = {
        "default": PoolSettings(min_idle=1, max_idle=3),
        "extra": PoolSettings(preload=("colorsys",), min_idle=0, max_idle=2),
    }
    pools = WarmPools(PoolsConfig(tmp_path, sys.executable, ROOT, settings), on_stale=lambda *a: stale.append(a))
    assert pools.declared == {"default", "extra"}
    assert await pools.start()
    running = asyncio.create_task(pools.run())
    try:
        await until(lambda: stats(pools, "default")["idle"] == 1)
        claimed = pools.take("default")
        assert claimed is not None
        assert stats(pools, "default")["claims"] == 1
        assert stats(pools, "default")["target"] == 2, "a claim that drained the pool grows its target"
        await claimed.release()
        pools.refill("default")
        await until(lambda: stats(pools, "default")["idle"] == 2)

        assert pools.take("extra") is None, "min_idle 0: the first claim misses"
        assert stats(pools, "extra")["misses"] == 1
        await until(lambda: stats(pools, "extra")["idle"] == 1)
        assert "colorsys" in stats(pools, "extra")["preload"]  # type: ignore[operator]

        generation = pools.generation("extra")
        assert generation is not None
        await pools.reconfigure({**settings, "extra": PoolSettings(preload=("wave",), max_idle=2)})
        assert pools.generation("extra") == generation + 1
        assert stale == [("extra", generation + 1)], "instances of the old zygote are named for replacement"
        assert "wave" in stats(pools, "extra")["preload"]  # type: ignore[operator]
        assert pools.declared == {"default", "extra"}

        zygote = pools.zygote("default")
        assert zygote is not None
        assert zygote.process is not None
        os.kill(zygote.process.pid, signal.SIGKILL)
        await until(lambda: stats(pools, "default")["zygote_restarts"] == 1)
        await until(lambda: ("default", 2) in stale)
        await until(lambda: stats(pools, "default")["idle"] >= 1)

        text = "".join(str(metric) for metric in PoolCollector(pools).collect())
        assert "nest_pool_claims" in text
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pools.close()
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("zygote-*.sock")))
