"""Keeping the warm pools: their zygotes, their idle instances, growth, recycling, reload, and their numbers.

`WarmPools` owns one `ZygotePool` (controller/warmpool.py: the process plumbing) per configured pool and the
generic instances each keeps forked ahead of need. The local backend claims one with `take()` on a cold start
and calls `refill()` once the claimed instance is ready. How many idle instances to keep, and which to recycle,
is decided by the pure `controller/poolsizing.py`; a tick every `TICK_S` applies it, restarts a dead zygote and
notices a zygote restarted on demand.

Replacement: every zygote start is a new *generation* of its pool. When a zygote dies, or `reconfigure()`
changes a pool's preloads, the new zygote is started first, idle instances of the old generation are released
and refilled from the new one, and `on_stale(pool, generation)` tells the backend that instances forked before
`generation` should be replaced (the fleet starts each replacement and drains the old one once it is ready).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controller.poolsizing import Pressure, Sizing, after_claim, initial, settle, to_fork, to_release
from controller.warmpool import (
    DEFAULT_PRELOAD,
    IdleInstance,
    ZygotePool,
    become_subreaper,
    kill_group,
    process_alive,
)
from nest.contracts.pools import PoolSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator
    from pathlib import Path

    from prometheus_client.metrics_core import Metric

logger = logging.getLogger("nest.warmpool")

TICK_S = 0.5
"""How often sizes, TTLs and zygote liveness are checked: a dead zygote is restarted within half a second."""


def sizing_of(settings: PoolSettings) -> Sizing:
    return Sizing(settings.min_idle, settings.max_idle, settings.idle_ttl, settings.quiet_period)


@dataclass(slots=True)
class PoolStats:
    """One pool's figures for `/metrics` and `nest pools`."""

    name: str
    preload: tuple[str, ...]
    generation: int = 0
    zygote_pid: int | None = None
    idle: int = 0
    preparing: int = 0
    target: int = 0
    min_idle: int = 0
    max_idle: int = 0
    claims: int = 0
    misses: int = 0
    refills: int = 0
    recycled: int = 0
    zygote_restarts: int = 0


@dataclass(slots=True)
class _Pool:
    zygote: ZygotePool
    settings: PoolSettings
    pressure: Pressure
    idle: collections.deque[IdleInstance] = field(default_factory=collections.deque)
    preparing: int = 0
    seen_generation: int = 0
    stats: PoolStats | None = None


@dataclass(frozen=True, slots=True)
class PoolsConfig:
    run_dir: Path
    python: str
    import_root: str
    settings: dict[str, PoolSettings] = field(default_factory=dict)
    """Every pool, `default` included (added with default settings when absent)."""
    environment: dict[str, str] = field(default_factory=dict)
    """The zygotes' whole environment (their preloads import under it): the backend's base for instances."""


class WarmPools:
    """The pools of one backend. `start()` then `run()`; `close()` at shutdown."""

    def __init__(
        self,
        config: PoolsConfig,
        *,
        confine: Callable[[int], Awaitable[Path | None]] | None = None,
        on_stale: Callable[[str, int], None] | None = None,
    ) -> None:
        self._config = config
        self._confine = confine
        self._on_stale = on_stale
        self._pools: dict[str, _Pool] = {}
        self.declared = frozenset({"default", *config.settings})
        """The pools a function may name: those configured, as of the last reload (whether or not they run)."""
        self._group: asyncio.TaskGroup | None = None
        self._platform_pid = os.getpid()

    # life cycle

    async def start(self) -> bool:
        """Start every pool's zygote. False (warm pool off) where forked instances cannot be adopted."""
        if not become_subreaper():
            logger.warning("warm pool off: this platform cannot adopt forked instances (no PR_SET_CHILD_SUBREAPER)")
            return False
        self._platform_pid = os.getpid()
        settings = {"default": PoolSettings(), **self._config.settings}
        for name, pool_settings in settings.items():
            await self._add(name, pool_settings)
        return True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                for name in self._pools:
                    self._top_up(name)
                while True:
                    await asyncio.sleep(TICK_S)
                    await self.tick(time.monotonic())
            finally:
                self._group = None

    async def close(self) -> None:
        """Shutdown: kill idle instances, reap them, stop the zygotes."""
        for pool in self._pools.values():
            for instance in pool.idle:
                kill_group(instance.process.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                for pool in self._pools.values():
                    while pool.idle:
                        await pool.idle.popleft().release()
        for pool in self._pools.values():
            await pool.zygote.close()

    # what the backend calls

    def zygote(self, name: str) -> ZygotePool | None:
        pool = self._pools.get(name)
        return pool.zygote if pool is not None else None

    def take(self, name: str) -> IdleInstance | None:
        """An idle instance of the pool that is still alive, or None (a miss: fork on demand or exec)."""
        pool = self._pools.get(name)
        if pool is None:
            return None
        stats = self._stats(name, pool)
        found = None
        while pool.idle and found is None:
            candidate = pool.idle.popleft()
            if candidate.process.returncode is None and process_alive(candidate.process.pid):
                found = candidate
            else:
                self._spawn_task(candidate.release())
        stats.claims += found is not None
        stats.misses += found is None
        pool.pressure = after_claim(
            sizing_of(pool.settings), pool.pressure, idle_left=len(pool.idle), now=time.monotonic()
        )
        return found

    def refill(self, name: str) -> None:
        """Fork what the pool lacks (the backend calls this once a claimed instance is ready: forking meanwhile
        would take CPU from the start it replaces)."""
        self._top_up(name)

    async def reconfigure(self, settings: dict[str, PoolSettings]) -> None:
        """Apply new pool settings (a reload): new pools start, removed ones stop, a pool whose preloads changed
        gets a new zygote (ready before the old one goes) and its instances are replaced."""
        settings = {"default": PoolSettings(), **settings}
        self.declared = frozenset(settings)  # a deploy may name a new pool at once, and no longer a removed one
        for name in [name for name in self._pools if name not in settings]:
            removed = self._pools.pop(name)
            await self._retire(name, removed, replaced_by=removed.zygote.generation + 1)
        for name, pool_settings in settings.items():
            pool = self._pools.get(name)
            if pool is None:
                await self._add(name, pool_settings)
            elif pool.settings.preload != pool_settings.preload:
                await self._add(name, pool_settings, after=pool.zygote.generation)
                if self._pools[name] is pool:
                    logger.warning("warm pool %r keeps its old preloads: the new zygote did not start", name)
                    continue
                await self._retire(name, pool, replaced_by=self._pools[name].zygote.generation)
            else:
                pool.settings = pool_settings
            self._top_up(name)

    def stats(self) -> list[PoolStats]:
        return [self._stats(name, pool) for name, pool in self._pools.items()]

    def generation(self, name: str) -> int | None:
        pool = self._pools.get(name)
        return pool.zygote.generation if pool is not None else None

    # the tick

    async def tick(self, now: float) -> None:
        for name, pool in list(self._pools.items()):
            if not pool.zygote.alive:
                logger.warning("warm pool %r: zygote died; starting a new one", name)
                self._stats(name, pool).zygote_restarts += 1
                try:
                    await pool.zygote.restart()
                except (OSError, RuntimeError, TimeoutError) as exc:
                    logger.warning("warm pool %r: zygote restart failed (%s); retrying", name, exc)
                    continue
            if pool.zygote.generation != pool.seen_generation:
                self._turn_over(name, pool)
            pool.pressure = settle(sizing_of(pool.settings), pool.pressure, now=now)
            born = [instance.born_at for instance in pool.idle]
            for index in reversed(to_release(sizing_of(pool.settings), pool.pressure, born, now=now)):
                instance = pool.idle[index]
                del pool.idle[index]
                self._stats(name, pool).recycled += 1
                self._spawn_task(instance.release())
            self._top_up(name)

    # internals

    async def _add(self, name: str, settings: PoolSettings, *, after: int = 0) -> None:
        preload = tuple(dict.fromkeys((*DEFAULT_PRELOAD, *settings.preload)))
        zygote = ZygotePool(
            name,
            self._config.run_dir / f"zygote-{name}.sock",
            self._config.python,
            self._config.import_root,
            preload,
            generation=after,
            environment=self._config.environment,
        )
        try:
            await zygote.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            logger.warning("warm pool %r off: %s; its functions start as fresh interpreters", name, exc)
            await zygote.close()
            return
        previous = self._pools.get(name)
        self._pools[name] = _Pool(
            zygote,
            settings,
            initial(sizing_of(settings)),
            seen_generation=zygote.generation,
            stats=previous.stats if previous is not None else None,
        )

    async def _retire(self, name: str, pool: _Pool, *, replaced_by: int) -> None:
        for instance in pool.idle:
            self._spawn_task(instance.release())
        pool.idle.clear()
        await pool.zygote.close()
        if self._on_stale is not None:
            self._on_stale(name, replaced_by)

    def _turn_over(self, name: str, pool: _Pool) -> None:
        """The zygote was restarted (crash): idle instances of older generations go, running ones are replaced."""
        generation = pool.seen_generation = pool.zygote.generation
        for instance in [i for i in pool.idle if i.generation < generation]:
            pool.idle.remove(instance)
            self._spawn_task(instance.release())
        if self._on_stale is not None:
            self._on_stale(name, generation)

    def _top_up(self, name: str) -> None:
        pool = self._pools.get(name)
        if pool is None or self._group is None:
            return
        for _ in range(to_fork(pool.pressure, idle=len(pool.idle), preparing=pool.preparing)):
            pool.preparing += 1
            self._spawn_task(self._prepare(name, pool))

    async def _prepare(self, name: str, pool: _Pool) -> None:
        try:
            instance = await pool.zygote.prepare(platform_pid=self._platform_pid)
            try:
                if self._confine is not None:
                    instance.cgroup = await self._confine(instance.process.pid)
            except BaseException:
                kill_group(instance.process.pid)
                instance.claims.close()
                instance.transport.close()
                raise
        except (OSError, RuntimeError) as exc:
            logger.warning("warm pool %r could not fork an idle instance: %s", name, exc)
            return
        finally:
            pool.preparing -= 1
        if self._pools.get(name) is not pool or instance.generation < pool.zygote.generation:
            await instance.release()  # the pool was replaced or its zygote restarted meanwhile
            return
        self._stats(name, pool).refills += 1
        pool.idle.append(instance)

    def _spawn_task(self, work: Coroutine[object, object, None]) -> None:
        if self._group is None:
            work.close()
            return
        self._group.create_task(work)

    def _stats(self, name: str, pool: _Pool) -> PoolStats:
        if pool.stats is None:
            pool.stats = PoolStats(name, pool.zygote.preload)
        stats = pool.stats
        stats.preload = pool.zygote.preload
        stats.generation = pool.zygote.generation
        stats.zygote_pid = pool.zygote.process.pid if pool.zygote.process is not None else None
        stats.idle, stats.preparing, stats.target = len(pool.idle), pool.preparing, pool.pressure.target
        stats.min_idle, stats.max_idle = pool.settings.min_idle, pool.settings.max_idle
        return stats


class PoolCollector:
    """Prometheus metrics of the pools, read at scrape time."""

    def __init__(self, pools: WarmPools) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["pool"]
        idle = GaugeMetricFamily("nest_pool_idle_instances", "Idle instances forked ahead of need", labels=labels)
        target = GaugeMetricFamily("nest_pool_idle_target", "Idle instances the pool aims to keep", labels=labels)
        counters = {
            "claims": CounterMetricFamily("nest_pool_claims", "Cold starts served by an idle instance", labels=labels),
            "misses": CounterMetricFamily("nest_pool_misses", "Cold starts that found no idle instance", labels=labels),
            "refills": CounterMetricFamily("nest_pool_refills", "Idle instances forked", labels=labels),
            "recycled": CounterMetricFamily(
                "nest_pool_recycled", "Idle instances released (TTL, shrink)", labels=labels
            ),
            "zygote_restarts": CounterMetricFamily("nest_pool_zygote_restarts", "Zygotes restarted", labels=labels),
        }
        info = GaugeMetricFamily(
            "nest_pool_info", "A pool's zygote: preloads and generation", labels=["pool", "preload", "generation"]
        )
        for stats in self.pools.stats():
            info.add_metric([stats.name, ",".join(stats.preload), str(stats.generation)], 1)
            idle.add_metric([stats.name], stats.idle)
            target.add_metric([stats.name], stats.target)
            for attribute, family in counters.items():
                family.add_metric([stats.name], getattr(stats, attribute))
        yield info
        yield idle
        yield target
        yield from counters.values()
