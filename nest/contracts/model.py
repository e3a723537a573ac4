"""Frozen values that cross components: which version, which instance, how a route behaves, how it scales."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nest.contracts.ids import FunctionName, InstanceId, VersionId


@dataclass(frozen=True, slots=True)
class VersionKey:
    """One immutable version of one function: the unit that scales and receives traffic."""

    function: FunctionName
    version: VersionId

    def __str__(self) -> str:
        return f"{self.function}@{self.version}"


@dataclass(frozen=True, slots=True)
class ScalingSpec:
    """How one version scales; durations in seconds. Built from `nest.yaml` `scaling:` by the manifest model.

    `target_concurrency` is the in-flight requests one instance should carry at 100% utilisation;
    the autoscaler aims at `target_concurrency * utilization` (0.7 by default: scale ahead at 70%).
    """

    min: int = 0
    max: int = 10
    target_concurrency: float = 10.0
    utilization: float = 0.7
    scale_down_delay_s: float = 30.0
    scale_to_zero_grace_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Route:
    """What the gateway needs to serve one function: its live version and per-request limits."""

    key: VersionKey
    concurrency: int
    timeout_s: float
    max_body_bytes: int
    methods: frozenset[str] = frozenset()
    """Allowed methods; empty means any."""
    paths: tuple[str, ...] = ()
    """Extra gateway paths that reach this function: exact (`/hello`) or prefix (`/api/*`)."""
    debug: bool = False


@dataclass(frozen=True, slots=True)
class InstanceAddress:
    """Where a ready instance listens, and how many requests it may carry at once."""

    instance_id: InstanceId
    key: VersionKey
    socket_path: str
    concurrency: int
    start_phases: tuple[tuple[str, float], ...] = ()
    """How the instance's start went, phase by phase in milliseconds (`spawn`, `init`), for the first
    response that waited for it (`Server-Timing`) and for `nest describe`."""


@dataclass(frozen=True, slots=True)
class InitFailure:
    """Why an instance of a version could not load the function's code."""

    key: VersionKey
    error_type: str
    detail: str
    at: float
    """Epoch seconds."""
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class VersionTraffic:
    """One second (or tick) of traffic for one version, as the gateway saw it.

    `concurrency` is the time-weighted mean of in-flight plus queued requests over the interval;
    `in_flight` and `queued` are the values at the end of it.
    """

    key: VersionKey
    concurrency: float
    in_flight: int
    queued: int
    completed: int
    interval_s: float
    extra: dict[str, float] = field(default_factory=dict)
