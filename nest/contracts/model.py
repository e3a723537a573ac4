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
class ScalingSchedule:
    """A scheduled minimum: from each time `cron` fires (in `timezone`) and for `duration_s`, keep `min` instances."""

    cron: str
    """Five-field cron expression, e.g. `0 9 * * MON-FRI`."""
    timezone: str = "UTC"
    """IANA zone name, e.g. `Europe/Paris`; the cron fields are read as wall-clock time there."""
    duration_s: float = 3600.0
    """Elapsed seconds the window lasts from each firing (8h is eight real hours, even across a DST change)."""
    min: int = 1


@dataclass(frozen=True, slots=True)
class ScalingSpec:
    """How one version scales; durations in seconds. Built from `nest.yaml` `scaling:` by the manifest model.

    Each metric's target is what one instance should carry at 100% utilisation; the autoscaler aims at
    `target * utilization` (0.7 by default: scale ahead at 70%). `target_concurrency` is in-flight requests,
    `target_qps` requests per second, `target_cpu` cores and `target_memory` bytes per instance; None ignores
    the metric. See `autoscaler/decision.py` for how they combine.
    """

    min: int = 0
    max: int = 10
    target_concurrency: float = 10.0
    utilization: float = 0.7
    scale_down_delay_s: float = 0.0
    """Scale down only to the highest windowed recommendation within this; 0, as Knative's default, measured best
    (docs/autoscaling.md): the stable window already lags a fall, and a panic holds a surge."""
    scale_to_zero_grace_s: float = 60.0
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    """Panic when the panic window's demand reaches this multiple of the current capacity."""
    max_scale_up_rate: float = 1000.0
    """At most `ceil(rate * current)` instances after one decision."""
    max_scale_down_rate: float = 2.0
    """At least `floor(current / rate)` instances after one decision."""
    initial_scale: int = 1
    """Instances on the first decision for a version that has none (a deploy); 0 waits for traffic. Knative's
    default is 1; `nest.yaml`'s is 0 (`scaling.initial_scale`), so a deploy costs nothing until a request."""
    activation_scale: int = 1
    """The least count whenever the version is not at zero (so also when waking from zero)."""
    target_qps: float | None = None
    target_cpu: float | None = None
    target_memory: float | None = None
    schedules: tuple[ScalingSchedule, ...] = ()
    prediction: bool = False
    """Add a short-horizon trend term, so a steady ramp is met before it overloads. Off by default: on the bench
    traces it costs more instance-seconds than the delays it saves (docs/autoscaling.md)."""
    start_latency_s: float = 0.05
    """Expected time from a scale-up decision to a ready instance (the prediction horizon, plus one tick)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where an async result goes: exactly one of another function, a webhook URL, or a NATS subject."""

    function: str | None = None
    webhook: str | None = None
    nats: str | None = None

    def __str__(self) -> str:
        if self.function:
            return f"function:{self.function}"
        return f"webhook:{self.webhook}" if self.webhook else f"nats:{self.nats}"


@dataclass(frozen=True, slots=True)
class AsyncSpec:
    """How one function's async invocations behave. Built from `nest.yaml` `async:`; durations in seconds."""

    concurrency: int = 10
    """Tasks of this function the dispatcher runs at once."""
    max_retries: int = 2
    max_event_age_s: float = 6 * 3600.0
    max_backlog: int = 100_000
    """Waiting tasks above which submissions get 429 with Retry-After (backpressure)."""
    max_body_bytes: int = 1024 * 1024
    on_success: Destination | None = None
    on_failure: Destination | None = None


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
    async_spec: AsyncSpec = field(default_factory=AsyncSpec)


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
    cpu: float | None = None
    """Cores in use by all the version's instances (mean over the interval), where the backend reports it."""
    memory: float | None = None
    """Bytes in use by all the version's instances, where the backend reports it."""
    arrived: int | None = None
    """Requests admitted during the interval (sent to an instance or queued for one): QPS is `arrived /
    interval_s`. None where the source does not count arrivals (QPS then falls back to completions)."""
