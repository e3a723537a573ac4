"""The backend contract: start and stop instances, and report what happens to them as events.

The reconciler (`controller/reconciler.py`) decides *what* to start and stop; a backend only does it. Readiness,
init failures, crashes and failed health checks come back as `InstanceEvent`s through the callback the backend
was built with, so the controller never polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from nest.contracts.ids import InstanceId
    from nest.contracts.model import InitFailure, InstanceAddress, VersionKey


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything a backend needs to start one instance of one version."""

    instance_id: InstanceId
    key: VersionKey
    code_dir: Path
    """The unpacked, read-only code of the version; put on `sys.path` by the runtime."""
    handler: str
    handler_style: str
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    memory_bytes: int = 256 * 1024**2
    concurrency: int = 10
    debug: bool = False
    pool: str = "default"
    """The warm pool to fork from, or `none` for a fresh interpreter."""
    package: str = ""
    """The chunked package's digest (`nest/contracts/chunks.py`): the instance fetches and unpacks it into the
    node's code cache unless it is there already, and `code_dir` is ignored. Empty for a tree unpacked at deploy."""


class EventKind(StrEnum):
    READY = "ready"
    """The instance imported the function and listens; `address` says where."""
    INIT_FAILED = "init_failed"
    """The function's code could not be loaded; `failure` says why. The process has exited."""
    EXITED = "exited"
    """The process ended (crash, recycle after an uninterruptible timeout, or a requested stop)."""
    UNHEALTHY = "unhealthy"
    """The liveness ping failed; the backend has killed the process (an EXITED event follows)."""


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    kind: EventKind
    instance_id: InstanceId
    key: VersionKey
    address: InstanceAddress | None = None
    failure: InitFailure | None = None
    exit_code: int | None = None
    detail: str = ""
    requested: bool = False
    """For EXITED: True when the exit followed `stop()`, False for a crash."""


class Backend(Protocol):
    """Runs instances. `run()` owns the background work (watchers, health pings) and must be running."""

    async def run(self) -> None: ...

    async def start(self, spec: InstanceSpec) -> None:
        """Launch the instance and return; READY or INIT_FAILED (then EXITED) follows as an event."""

    async def stop(self, instance_id: InstanceId, *, grace_s: float) -> None:
        """Ask the instance to finish in-flight work and exit; kill it after `grace_s`. Returns once it is gone."""

    async def stop_all(self, *, grace_s: float) -> None:
        """Stop every instance (shutdown); returns when none is left."""

    def last_usage(self, key: VersionKey) -> tuple[float | None, float | None, int]:
        """(cores, bytes, instances sampled) of a version as last read for the autoscaler, for `nest describe`;
        None for a figure the backend does not report (or has not read yet)."""
        ...
