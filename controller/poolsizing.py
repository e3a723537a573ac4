"""How many idle instances a warm pool keeps, and which ones it recycles.

Pure: no I/O, no clock reads (`now` is monotonic seconds, passed in). `controller/pooling.py` feeds it every
claim and a once-a-second tick, and forks or releases instances to match.

Reactive growth (after Fission's pool manager, which keeps a fixed pool, and Lambda's provisioned concurrency
auto-scaling, which follows utilisation): a claim that leaves the pool with no idle instance (or finds none: a
miss) means refills are not keeping up, so the idle target grows by one, up to `max_idle`. E.g. min 2, max 6:
a burst of five claims in 20 ms drains the two idle instances and raises the target to 5; the refills fork three
more. Once no claim has drained the pool for `quiet_period`, the target falls back to `min_idle` and the surplus
idle instances are released. Idle instances older than `idle_ttl` are recycled (released and refilled), so an
idle instance never holds pages or state of a zygote that long gone stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True, slots=True)
class Sizing:
    """A pool's operator settings, in seconds (from `nest.contracts.pools.PoolSettings`)."""

    min_idle: int
    max_idle: int
    idle_ttl_s: float
    quiet_period_s: float


@dataclass(frozen=True, slots=True)
class Pressure:
    """The pool's current idle target and when a claim last drained it."""

    target: int
    last_drained: float | None = None


def initial(sizing: Sizing) -> Pressure:
    return Pressure(sizing.min_idle)


def after_claim(sizing: Sizing, pressure: Pressure, *, idle_left: int, now: float) -> Pressure:
    """The target after a claim that left `idle_left` idle instances ready (a miss counts as 0 left)."""
    if idle_left > 0:
        return pressure
    return Pressure(min(sizing.max_idle, max(pressure.target, sizing.min_idle) + 1), now)


def settle(sizing: Sizing, pressure: Pressure, *, now: float) -> Pressure:
    """The target after a quiet tick: back to `min_idle` once nothing drained the pool for `quiet_period`.
    A changed `min_idle`/`max_idle` (reload) is applied here too."""
    target = min(sizing.max_idle, max(sizing.min_idle, pressure.target))
    drained = pressure.last_drained
    if target > sizing.min_idle and drained is not None and now - drained >= sizing.quiet_period_s:
        return Pressure(sizing.min_idle, None)
    return replace(pressure, target=target)


def to_fork(pressure: Pressure, *, idle: int, preparing: int) -> int:
    """How many instances to fork now to reach the target."""
    return max(0, pressure.target - idle - preparing)


def to_release(sizing: Sizing, pressure: Pressure, born: Sequence[float], *, now: float) -> list[int]:
    """Indices (into `born`, oldest first) of idle instances to release: those past `idle_ttl`, then the oldest
    beyond the target."""
    expired = [index for index, at in enumerate(born) if now - at >= sizing.idle_ttl_s]
    keep = [index for index in range(len(born)) if index not in expired]
    surplus = keep[: max(0, len(keep) - pressure.target)]
    return sorted(expired + surplus)
