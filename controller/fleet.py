"""The fleet: every instance of every version, kept at the count the scaler asks for.

Holds the desired count per live version (set through `scale`, the autoscaler's `ScaleTarget` port), follows
the backend's events (ready, init failure, exit, unhealthy), publishes each version's ready instances to the
gateway (`RoutePublisher`), and runs a reconcile loop that applies `reconciler.plan`. Scale-down drains: an
instance leaves the endpoint set first, then the backend stops it with a grace of the function's timeout.

Deciding counts is the autoscaler's job; routing is the gateway's. What a version *is* comes from
`controller/functions.py`, which registers and unregisters versions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from controller.backends.base import EventKind, InstanceEvent, InstanceSpec
from controller.reconciler import Backoff, InstanceState, InstanceView, Start, Stop, backoff_after, plan
from nest.contracts.ids import InstanceId

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.backends.base import Backend
    from controller.ports import RoutePublisher
    from nest.contracts.model import InitFailure, InstanceAddress, ScalingSpec, VersionKey

logger = logging.getLogger("nest.controller")

DECISIONS_KEPT = 20
RECONCILE_EVERY_S = 1.0
"""Also reconcile on a timer, so a backoff that expires is acted on without a new event."""


@dataclass(slots=True)
class Instance:
    spec: InstanceSpec
    state: InstanceState
    started_at: float
    address: InstanceAddress | None = None
    ready_at: float | None = None


@dataclass(slots=True)
class Version:
    template: InstanceSpec
    scaling: ScalingSpec
    desired: int = 0
    decisions: deque[tuple[float, int, str, str]] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    """(epoch seconds, desired, mode, reason) of the decisions that changed the count or the mode."""
    mode: str = "stable"
    last_failure: InitFailure | None = None


class Fleet:
    """Instances per version, reconciled onto a backend. `run()` must be running for anything to start."""

    def __init__(
        self,
        publisher: RoutePublisher,
        *,
        clock: Callable[[], float] = time.time,
        on_start_phases: Callable[[tuple[tuple[str, float], ...]], None] | None = None,
    ) -> None:
        self.backend: Backend | None = None
        self._on_start_phases = on_start_phases
        self._cold_starts: dict[str, deque[dict[str, Any]]] = {}
        self._publisher = publisher
        self._clock = clock
        self._versions: dict[VersionKey, Version] = {}
        self._instances: dict[InstanceId, Instance] = {}
        self._backoffs: dict[VersionKey, Backoff] = {}
        self._wake = asyncio.Event()
        self._run_token = os.urandom(2).hex()
        self._counter = itertools.count(1)
        self._stopping: set[asyncio.Task[None]] = set()
        self._superseded: set[InstanceId] = set()
        """Ready instances due for replacement (their zygote died or their pool changed): each keeps serving
        until a replacement of its version is ready, then drains (`supersede`)."""

    # what controller/functions.py calls

    def register(self, template: InstanceSpec, scaling: ScalingSpec, *, takeover: VersionKey | None = None) -> None:
        """A version goes live (deploy, or found at start-up). Starts at its `min`, or, replacing `takeover`
        under load, at as many instances as that version has (within `max`): the load it served arrives at
        once, and one instance would have queued it until the autoscaler's next tick."""
        if template.key in self._versions:
            self._wake.set()
            return
        version = self._versions[template.key] = Version(template, scaling, desired=scaling.min)
        if takeover is not None and (running := min(sum(self.counts(takeover)), scaling.max)) > version.desired:
            version.desired = running
            reason = f"redeploy: takes over the {running} instance(s) of version {takeover.version}"
            version.decisions.append((self._clock(), running, version.mode, reason))
        self._wake.set()

    def unregister(self, key: VersionKey) -> None:
        """The version is no longer live: its instances drain and stop."""
        self._versions.pop(key, None)
        self._backoffs.pop(key, None)
        self._wake.set()

    def instances_of(self, function: str) -> list[dict[str, Any]]:
        return [
            {
                "id": instance_id,
                "version": instance.spec.key.version,
                "state": instance.state.value,
                "started_at": instance.started_at,
                "ready_at": instance.ready_at,
                "socket": instance.address.socket_path if instance.address is not None else None,
            }
            for instance_id, instance in self._instances.items()
            if instance.spec.key.function == function
        ]

    def counts(self, key: VersionKey) -> tuple[int, int]:
        """(ready, starting) instances of a version."""
        ready = starting = 0
        for instance in self._instances.values():
            if instance.spec.key == key:
                ready += instance.state is InstanceState.READY
                starting += instance.state is InstanceState.STARTING
        return ready, starting

    def packages(self) -> tuple[set[str], set[str]]:
        """(code packages an instance exists for, in any state; packages of the live versions): what the node
        cache's janitor must keep, and what it keeps longest (`controller/codestore/nodecache.py`)."""
        running = {instance.spec.package for instance in self._instances.values() if instance.spec.package}
        live = {version.template.package for version in self._versions.values() if version.template.package}
        return running, live

    def scaling_status(self, key: VersionKey) -> dict[str, Any]:
        version = self._versions.get(key)
        if version is None:
            return {"desired": 0, "mode": "stable", "decisions": [], "usage": self._usage(key)}
        decisions = [
            {"at": at, "desired": n, "mode": mode, "reason": reason}
            for at, n, mode, reason in reversed(version.decisions)
        ]
        return {"desired": version.desired, "mode": version.mode, "decisions": decisions, "usage": self._usage(key)}

    def _usage(self, key: VersionKey) -> dict[str, Any]:
        """The CPU (mean cores) and memory (bytes) the backend last read for the autoscaler; None if unknown."""
        cores, memory, sampled = self.backend.last_usage(key) if self.backend is not None else (None, None, 0)
        return {"cpu_cores": cores, "memory_bytes": memory, "instances": sampled}

    def last_failure(self, key: VersionKey) -> InitFailure | None:
        version = self._versions.get(key)
        return version.last_failure if version is not None else None

    # the autoscaler's ScaleTarget port

    def scalables(self) -> dict[VersionKey, tuple[ScalingSpec, int]]:
        return {key: (version.scaling, sum(self.counts(key))) for key, version in self._versions.items()}

    async def scale(self, key: VersionKey, desired: int, reason: str, *, mode: str = "stable") -> None:
        version = self._versions.get(key)
        if version is None:
            return
        if desired != version.desired or mode != version.mode:
            version.decisions.append((self._clock(), desired, mode, reason))
            version.mode = mode
        if desired != version.desired:
            version.desired = desired
            self._wake.set()

    def supersede(self, instance_id: InstanceId) -> None:
        """Replace a ready instance without dropping traffic: a new one starts, and this one drains only once
        the new one is ready (a rolling update of one, like Kubernetes' maxSurge=1, maxUnavailable=0)."""
        instance = self._instances.get(instance_id)
        if instance is not None and instance.state is InstanceState.READY:
            self._superseded.add(instance_id)
            self._wake.set()

    # the backend's events

    def on_event(self, event: InstanceEvent) -> None:
        instance = self._instances.get(event.instance_id)
        if instance is None:
            return
        key = event.key
        if event.kind is EventKind.READY and event.address is not None:
            if instance.state is InstanceState.STARTING:
                instance.state = InstanceState.READY
                instance.address = event.address
                instance.ready_at = self._clock()
                self._backoffs.pop(key, None)
                self._publish(key)
                self._record_start(event.instance_id, key, event.address.start_phases)
                self._retire_one_superseded(key)
        elif event.kind is EventKind.INIT_FAILED and event.failure is not None:
            failures = self._backoffs[key].failures + 1 if key in self._backoffs else 1
            self._backoffs[key] = backoff_after(failures, self._clock())
            version = self._versions.get(key)
            if version is not None:
                version.last_failure = event.failure
            logger.warning("instance %s failed to initialise: %s", event.instance_id, event.failure.detail)
            self._publisher.report_init_failure(event.failure)
        elif event.kind is EventKind.EXITED:
            del self._instances[event.instance_id]
            self._superseded.discard(event.instance_id)
            if instance.state is InstanceState.READY and not event.requested:
                logger.warning("instance %s exited unexpectedly (code %s)", event.instance_id, event.exit_code)
            self._publish(key)
        elif event.kind is EventKind.UNHEALTHY:
            instance.state = InstanceState.STOPPING
            self._publish(key)
        self._wake.set()

    def _record_start(self, instance_id: InstanceId, key: VersionKey, phases: tuple[tuple[str, float], ...]) -> None:
        history = self._cold_starts.setdefault(key.function, deque(maxlen=DECISIONS_KEPT))
        history.append(
            {"at": self._clock(), "instance": instance_id, "version": key.version, "phases_ms": dict(phases)}
        )
        if self._on_start_phases is not None and phases:
            self._on_start_phases(phases)

    def _retire_one_superseded(self, key: VersionKey) -> None:
        old = [i for i in self._superseded if self._instances[i].spec.key == key]
        if old:
            oldest = min(old, key=lambda i: self._instances[i].started_at)
            self._begin_stop(oldest, "replaced: its warm pool changed or its zygote died")

    def cold_starts(self, function: str) -> list[dict[str, Any]]:
        """The function's most recent instance starts with their phases, newest first."""
        return list(reversed(self._cold_starts.get(function, ())))

    def _publish(self, key: VersionKey) -> None:
        addresses = [
            instance.address
            for instance in self._instances.values()
            if instance.spec.key == key and instance.state is InstanceState.READY and instance.address is not None
        ]
        self._publisher.set_endpoints(key, addresses)

    # reconciling

    async def run(self) -> None:
        """Reconcile on every change and once a second, until cancelled."""
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as the event is set,
            # which is exactly what happens at shutdown (instances exiting set it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_EVERY_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconcile failed; retrying in %.0fs", RECONCILE_EVERY_S)

    async def reconcile(self) -> None:
        views = [
            InstanceView(instance_id, instance.spec.key, instance.state, instance.started_at)
            for instance_id, instance in self._instances.items()
        ]
        desired = {key: version.desired + self._surge(key, version.desired) for key, version in self._versions.items()}
        for action in plan(desired, views, backoffs=self._backoffs, now=self._clock()):
            if isinstance(action, Start):
                await self._start(action.key)
            elif isinstance(action, Stop):
                self._begin_stop(action.instance_id, action.reason)

    def _surge(self, key: VersionKey, desired: int) -> int:
        """Extra instances to start as replacements of superseded ones (no more than the version wants)."""
        return min(desired, sum(1 for i in self._superseded if self._instances[i].spec.key == key))

    async def _start(self, key: VersionKey) -> None:
        assert self.backend is not None, "wire a backend before running the fleet"
        version = self._versions[key]
        instance_id = InstanceId(f"{key.function}-{key.version[:6]}-{self._run_token}{next(self._counter)}")
        spec = replace(version.template, instance_id=instance_id)
        self._instances[instance_id] = Instance(spec, InstanceState.STARTING, self._clock())
        try:
            await self.backend.start(spec)
        except Exception as exc:
            del self._instances[instance_id]
            failures = self._backoffs[key].failures + 1 if key in self._backoffs else 1
            self._backoffs[key] = backoff_after(failures, self._clock())
            logger.exception("could not start an instance of %s", key)
            raise RuntimeError(f"starting {instance_id} failed: {exc}") from exc

    def _begin_stop(self, instance_id: InstanceId, reason: str) -> None:
        instance = self._instances[instance_id]
        self._superseded.discard(instance_id)
        was_ready = instance.state is InstanceState.READY
        instance.state = InstanceState.STOPPING
        if was_ready:
            self._publish(instance.spec.key)  # out of routing first: drain
        logger.info("stopping %s: %s", instance_id, reason)
        task = asyncio.create_task(self._stop(instance_id, grace_s=instance.spec.timeout_s + 1.0))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, instance_id: InstanceId, *, grace_s: float) -> None:
        assert self.backend is not None
        await self.backend.stop(instance_id, grace_s=grace_s)

    async def shutdown(self, *, grace_s: float) -> None:
        """Stop everything: in-flight requests get `grace_s` to finish."""
        self._versions.clear()
        if self.backend is not None:
            await self.backend.stop_all(grace_s=grace_s)
        for task in list(self._stopping):
            task.cancel()
        await asyncio.gather(*self._stopping, return_exceptions=True)
