"""`FakeBackend`: instances in memory (the controller's `Backend` port). `start` emits READY at once unless the
test set `fail_with`; `crash(id)` emits an unexpected EXITED; `stopped` and `started` record calls."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from controller.backends.base import EventKind, InstanceEvent
from nest.contracts.model import InitFailure, InstanceAddress

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.backends.base import InstanceSpec
    from nest.contracts.ids import InstanceId
    from nest.contracts.model import VersionKey


class FakeBackend:
    def __init__(self, on_event: Callable[[InstanceEvent], None]) -> None:
        self.on_event = on_event
        self.started: list[InstanceSpec] = []
        self.stopped: list[InstanceId] = []
        self.running: dict[InstanceId, InstanceSpec] = {}
        self.fail_with: InitFailure | None = None

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def start(self, spec: InstanceSpec) -> None:
        self.started.append(spec)
        if self.fail_with is not None:
            failure = InitFailure(spec.key, self.fail_with.error_type, self.fail_with.detail, at=time.time())
            self.on_event(InstanceEvent(EventKind.INIT_FAILED, spec.instance_id, spec.key, failure=failure))
            self.on_event(InstanceEvent(EventKind.EXITED, spec.instance_id, spec.key, exit_code=3))
            return
        self.running[spec.instance_id] = spec
        address = InstanceAddress(spec.instance_id, spec.key, f"/fake/{spec.instance_id}.sock", spec.concurrency)
        self.on_event(InstanceEvent(EventKind.READY, spec.instance_id, spec.key, address=address))

    async def stop(self, instance_id: InstanceId, *, grace_s: float) -> None:
        spec = self.running.pop(instance_id, None)
        if spec is not None:
            self.stopped.append(instance_id)
            self.on_event(InstanceEvent(EventKind.EXITED, instance_id, spec.key, exit_code=0, requested=True))

    async def stop_all(self, *, grace_s: float) -> None:
        for instance_id in list(self.running):
            await self.stop(instance_id, grace_s=grace_s)

    def last_usage(self, key: VersionKey) -> tuple[float | None, float | None, int]:
        return None, None, 0

    def crash(self, instance_id: InstanceId) -> None:
        spec = self.running.pop(instance_id)
        self.on_event(InstanceEvent(EventKind.EXITED, instance_id, spec.key, exit_code=-9))
