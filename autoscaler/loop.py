"""The autoscaler's loop: once a tick, collect traffic, decide per version, apply; at once on a poke.

The one async module of the autoscaler. It owns the per-version `ScalerState` between ticks and nothing else:
traffic comes through `MetricsSource`, the instances' CPU and memory through `UsageSource` (read once a tick,
after the traffic), decisions go out through `ScaleTarget`, and the decision itself is `decision.decide`. QPS
is the requests *admitted* over the interval (`VersionTraffic.arrived`) where the source counts them: arrivals
show a load that outgrows its instances at once, while completions are capped by the capacity already there.
A poke (the activator holding requests for a version none of whose instances is ready) decides for that version
immediately rather than up to a tick later, for as many instances as the waiting requests need: a cold start, or
a burst arriving while its instances start, must not wait for the clock.

Two clocks: the monotonic one paces the ticks and is what the metrics source is asked with; decisions get wall
time (epoch seconds), because schedules are wall-clock. After a restart the states are empty: each version's
first decision counts the instances it finds (see `decision.py`), so a restart never flaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from autoscaler.decision import Decision, Mode, Observation, ScalerState, answer_poke, decide

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from autoscaler.ports import MetricsSource, ScaleTarget, UsageSource
    from nest.contracts.model import ScalingSpec, VersionKey, VersionTraffic

logger = logging.getLogger("nest.autoscaler")

DECISIONS_KEPT = 20
LONGEST_INTERVAL_S = 60.0
"""A version absent from the traffic had none since its last tick; a longer pause than this is a gap."""
ERROR_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
"""Pause after a failing tick, growing while ticks keep failing (kopf's `throttled`, simplified)."""


class Autoscaler:
    def __init__(
        self,
        metrics: MetricsSource,
        target: ScaleTarget,
        *,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        usage: UsageSource | None = None,
    ) -> None:
        self._metrics = metrics
        self._usage = usage
        self._usage_failing = False
        self._target = target
        self._tick_s = tick_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._states: dict[VersionKey, ScalerState] = {}
        self._modes: dict[VersionKey, Mode] = {}
        self._ticked_at: dict[VersionKey, float] = {}
        self._decisions: dict[VersionKey, deque[tuple[float, int, str]]] = {}
        self._poked: dict[VersionKey, int] = {}
        """Versions with requests waiting since the last answer, and the most that waited at once."""
        self._wake = asyncio.Event()

    def poke(self, key: VersionKey, waiting: int = 1) -> None:
        """`waiting` requests wait for `key` (the activator's buffer): decide for it now. Cheap and non-blocking
        (called on the request path, once per request that has to wait)."""
        self._poked[key] = max(self._poked.get(key, 0), waiting)
        self._wake.set()

    def recent_decisions(self, key: VersionKey) -> list[tuple[float, int, str]]:
        """(epoch seconds, desired, reason) of the decisions that changed the count or the mode, oldest first."""
        return list(self._decisions.get(key, ()))

    def mode(self, key: VersionKey) -> Mode:
        return self._modes.get(key, Mode.STABLE)

    async def run(self) -> None:
        failures = 0
        next_tick = self._clock() + self._tick_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_tick - self._clock())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._clock() >= next_tick:
                    next_tick = self._clock() + self._tick_s
                    self._poked.clear()
                    await self.tick()
                else:
                    await self.answer_pokes()
                failures = 0
            except Exception:
                delay = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                failures += 1
                logger.exception("autoscaler tick failed; next attempt in %.0fs", delay)
                await asyncio.sleep(delay)

    async def tick(self) -> None:
        """Decide for every live version from one interval of traffic."""
        collected = self._metrics.collect(self._clock())
        if inspect.isawaitable(collected):
            collected = await collected
        traffic = {item.key: item for item in collected}
        used = await self._used()
        now = self._wall_clock()
        scalables = self._target.scalables()
        for key in list(self._states):
            if key not in scalables:
                for kept in (self._states, self._decisions, self._modes, self._ticked_at):
                    kept.pop(key, None)
        for key, (spec, current) in scalables.items():
            since = self._ticked_at.get(key)
            self._ticked_at[key] = now
            quiet_s = min(max(now - since, 0.0), LONGEST_INTERVAL_S) if since is not None else self._tick_s
            ready, _ = self._target.counts(key)
            seen = _observe(traffic.get(key), current, quiet_s, ready=ready, used=used.get(key))
            await self._apply(key, spec, seen, now)

    async def _used(self) -> Mapping[VersionKey, tuple[float | None, float | None]]:
        """The backend's figures for this tick; none (the decisions go ahead on traffic) if it cannot say."""
        if self._usage is None:
            return {}
        try:
            used = await self._usage.usage()
        except Exception:
            if not self._usage_failing:
                logger.exception("reading the instances' CPU and memory failed; deciding on traffic alone")
            self._usage_failing = True
            return {}
        if self._usage_failing:
            logger.info("the instances' CPU and memory are read again")
        self._usage_failing = False
        return used

    async def answer_pokes(self) -> None:
        """Decide at once for poked versions none of whose instances is ready (`decision.answer_poke`)."""
        poked, self._poked = self._poked, {}
        scalables = self._target.scalables()
        now = self._wall_clock()
        for key, waiting in poked.items():
            if key not in scalables:
                continue
            spec, current = scalables[key]
            ready, _ = self._target.counts(key)
            seen = Observation(0.0, 0, max(waiting, 1), 0, current, poked=True, ready=ready, interval_s=0.0)
            decision = answer_poke(spec, self._states.get(key, ScalerState()), seen, now)
            if decision is not None:
                await self._record(key, decision, now)

    async def _apply(self, key: VersionKey, spec: ScalingSpec, seen: Observation, now: float) -> Decision:
        decision = decide(spec, self._states.get(key, ScalerState()), seen, now)
        await self._record(key, decision, now)
        return decision

    async def _record(self, key: VersionKey, decision: Decision, now: float) -> None:
        """Keep the decision's state and history, and send its count to the target."""
        self._states[key] = decision.state
        history = self._decisions.setdefault(key, deque(maxlen=DECISIONS_KEPT))
        changed = self._modes.get(key, Mode.STABLE) is not decision.mode
        if changed or not history or history[-1][1] != decision.desired:
            history.append((now, decision.desired, decision.reason))
        self._modes[key] = decision.mode
        await self._target.scale(key, decision.desired, decision.reason, mode=decision.mode.value)


def _observe(
    traffic: VersionTraffic | None,
    current: int,
    quiet_s: float,
    *,
    ready: int,
    used: tuple[float | None, float | None] | None = None,
) -> Observation:
    """The decision's view of one interval; no entry means no traffic over the time since the last tick.

    CPU and memory are the backend's (`used`) where it knows them, else what the traffic source carried (a
    remote gateway may report them). QPS is arrivals over the interval where counted; None lets the decision
    derive it from completions.
    """
    cpu, memory = used if used is not None else (None, None)
    if traffic is None:
        return Observation(0.0, 0, 0, 0, current, ready=ready, cpu=cpu, memory=memory, interval_s=quiet_s)
    interval_s = max(traffic.interval_s, 0.0)
    qps = traffic.arrived / interval_s if traffic.arrived is not None and interval_s > 0 else None
    return Observation(
        traffic.concurrency,
        traffic.in_flight,
        traffic.queued,
        traffic.completed,
        current,
        ready=ready,
        qps=qps,
        cpu=cpu if cpu is not None else traffic.cpu,
        memory=memory if memory is not None else traffic.memory,
        interval_s=interval_s,
    )
