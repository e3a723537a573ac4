"""Reconciling: from desired counts and the instances that exist to the actions that close the gap.

Pure: no I/O, no clock reads (`now` is an argument). `controller/fleet.py` feeds it and carries the actions out
through the backend. Rules, each from what users of Knative and Lambda expect:

- a version with fewer live (starting or ready) instances than desired gets the missing ones started, unless it
  is backing off after init failures: then one probe instance at a time, and none before `retry_at`;
- a version with more gets the surplus stopped: instances still starting first (they carry no traffic), then
  the newest ready ones (the oldest are warmest);
- instances of versions nobody wants any more (an older version after a deploy, a deleted function) all stop;
- instances already stopping are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nest.contracts.ids import InstanceId
    from nest.contracts.model import VersionKey


class InstanceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class InstanceView:
    instance_id: InstanceId
    key: VersionKey
    state: InstanceState
    started_at: float


@dataclass(frozen=True, slots=True)
class Backoff:
    """A version whose instances failed to initialise: `failures` in a row, next start not before `retry_at`."""

    failures: int
    retry_at: float


@dataclass(frozen=True, slots=True)
class Start:
    key: VersionKey


@dataclass(frozen=True, slots=True)
class Stop:
    instance_id: InstanceId
    reason: str


Action = Start | Stop


def backoff_after(failures: int, now: float, *, base_s: float = 1.0, cap_s: float = 60.0) -> Backoff:
    """Exponential restart backoff: 1 s, 2 s, 4 s ... up to 60 s (Kubernetes' CrashLoopBackOff, shorter)."""
    return Backoff(failures, now + min(cap_s, base_s * 2 ** max(0, failures - 1)))


def plan(
    desired: Mapping[VersionKey, int],
    instances: Sequence[InstanceView],
    *,
    backoffs: Mapping[VersionKey, Backoff],
    now: float,
) -> list[Action]:
    """The starts and stops that move `instances` towards `desired`."""
    actions: list[Action] = []
    by_key: dict[VersionKey, list[InstanceView]] = {}
    for instance in instances:
        if instance.state is not InstanceState.STOPPING:
            by_key.setdefault(instance.key, []).append(instance)
    for key, live in by_key.items():
        if key not in desired:
            actions.extend(Stop(i.instance_id, "version no longer wanted") for i in live)
    for key, want in desired.items():
        live = by_key.get(key, [])
        if len(live) < want:
            actions.extend(Start(key) for _ in range(_startable(key, want - len(live), live, backoffs, now)))
        elif len(live) > want:
            surplus = sorted(live, key=_stop_order)[: len(live) - want]
            actions.extend(Stop(i.instance_id, f"scaled to {want}") for i in surplus)
    return actions


def _startable(
    key: VersionKey, missing: int, live: list[InstanceView], backoffs: Mapping[VersionKey, Backoff], now: float
) -> int:
    backoff = backoffs.get(key)
    if backoff is None:
        return missing
    if now < backoff.retry_at or any(i.state is InstanceState.STARTING for i in live):
        return 0
    return 1


def _stop_order(instance: InstanceView) -> tuple[int, float]:
    return (0 if instance.state is InstanceState.STARTING else 1, -instance.started_at)
