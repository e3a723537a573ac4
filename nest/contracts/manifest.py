"""The function manifest, `nest.yaml`: the model, its validation and its JSON Schema.

Every error names the field and the fix, e.g. `memory: "512" has no unit (expected e.g. "512Mi")`. Unknown keys
are errors. Durations are written `"30s"`, `"500ms"`, `"5m"`, `"1h"` (or a number of seconds); sizes `"128Mi"`,
`"1Gi"`, `"6MB"` (or a number of bytes).

```yaml
name: hello                 # DNS label: lowercase letters, digits and '-', at most 63 characters
handler: main:handle        # module:callable, imported from the package root
handler_style: native       # native | asgi | lambda
env: {GREETING: hi}
timeout: 30s
memory: 256Mi
concurrency: 10             # max in-flight requests per instance
scaling: {min: 0, max: 10, utilization: 0.7, scale_down_delay: 0s, scale_to_zero_grace: 60s}
  # more scaling keys (docs/manifest.md): stable_window, panic_window, panic_threshold, max_scale_up_rate,
  # max_scale_down_rate, initial_scale, activation_scale, target_qps, target_cpu, target_memory, prediction,
  # start_latency, schedules: [{cron: "0 9 * * MON-FRI", timezone: Europe/Paris, duration: 8h, min: 4}]
http: {methods: [GET, POST], paths: [/hello, /api/hello/*]}
package: {codec: zstd, layout: archive}  # zstd | lz4 | none; archive | tree (see docs/manifest.md)
```
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from nest.contracts.errors import InvalidInput
from nest.contracts.ids import FunctionName
from nest.contracts.model import AsyncSpec, Destination, ScalingSchedule, ScalingSpec

NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63
MANIFEST_FILE = "nest.yaml"
MANIFEST_MAX_BYTES = 64 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[KMGT]B|B)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "Ki": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "Mi": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "Gi": 1024**3,
    "T": 1000**4,
    "TB": 1000**4,
    "Ti": 1024**4,
}


class ManifestError(InvalidInput):
    """One or more problems in a manifest; `problems` lists `(field, message)` pairs, the message is all of them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        first_field = problems[0][0] if problems else ""
        text = "; ".join(f"{where}: {what}" if where else what for where, what in problems)
        super().__init__(first_field, text)
        self.message = text
        self.problems = problems


def validate_name(name: str) -> str:
    """Check a function name; raise `InvalidInput` naming the fault. Used for manifests and for URLs."""
    if not name:
        raise InvalidInput("name", "is empty (expected a DNS label such as 'hello')")
    if len(name) > NAME_MAX:
        raise InvalidInput("name", f"{name[:20]!r}... is {len(name)} characters long (at most {NAME_MAX})")
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            "name",
            f"{name!r} is not a DNS label (use lowercase letters, digits and '-', starting with a letter,"
            " e.g. 'resize-image')",
        )
    return name


def parse_duration(value: Any) -> float:
    """`"30s"` -> 30.0, `"500ms"` -> 0.5, `90` -> 90.0. Raises `ValueError` naming the expected form."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (expected e.g. '30s', '500ms', '5m')")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (expected e.g. '30s', '500ms', '5m')")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"{value!r} is negative (expected a duration such as '30s')")
    return seconds


def parse_size(value: Any) -> int:
    """`"128Mi"` -> 134217728, `"6MB"` -> 6000000. A bare string without a unit is refused as ambiguous."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (expected e.g. '128Mi')")
    if isinstance(value, int):
        return value
    text = str(value)
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (expected e.g. '128Mi', '1Gi', '6MB')")
    if match.group(2) is None:
        raise ValueError(f"{text!r} has no unit (expected e.g. '{text.strip()}Mi')")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class HandlerStyle(StrEnum):
    """How the runtime calls the code: `native` handle(request), `asgi` an ASGI app, `lambda` handler(event, ctx)."""

    NATIVE = "native"
    ASGI = "asgi"
    LAMBDA = "lambda"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScalingWindow(_Strict):
    """One `scaling.schedules` entry: from each time `cron` fires (in `timezone`), keep `min` for `duration`."""

    cron: str = Field(description="Five-field cron expression, e.g. '0 9 * * MON-FRI' (weekdays at 09:00).")
    timezone: str = Field("UTC", max_length=64, description="IANA timezone the cron fields are read in.")
    duration: Duration = Field(gt=0, le=7 * 86400, description="How long each window lasts, e.g. '8h'.")
    min: int = Field(ge=1, le=1000, description="Instances kept during the window.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if len(cron) > 128 or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ValueError(f"{cron[:40]!r} is not a five-field cron expression (e.g. '0 9 * * MON-FRI')")
        return cron

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{timezone!r} is not an IANA timezone (e.g. 'Europe/Paris', 'UTC')") from None
        return timezone


class Scaling(_Strict):
    """`scaling:` how many instances, and how fast to change their number."""

    min: int = Field(0, ge=0, le=1000, description="Instances kept even with no traffic (reserved instances).")
    max: int = Field(10, ge=1, le=1000, description="Upper bound on instances.")
    target_concurrency: float | None = Field(
        None, gt=0, le=1000, description="In-flight requests per instance at 100% utilisation (default: concurrency)."
    )
    utilization: float = Field(0.7, gt=0, le=1, description="Fraction of the target to aim at: scale ahead at 70%.")
    scale_down_delay: Duration = Field(0.0, le=3600, description="Wait this long before removing instances.")
    scale_to_zero_grace: Duration = Field(60.0, le=86400, description="Idle time before the last instance goes.")
    stable_window: Duration = Field(60.0, ge=1, le=3600, description="Window the stable demand is averaged over.")
    panic_window: Duration = Field(6.0, ge=1, le=3600, description="Short window that detects bursts (panic).")
    panic_threshold: float = Field(
        2.0, ge=1, le=100, description="Panic when the panic window's demand reaches this multiple of capacity."
    )
    max_scale_up_rate: float = Field(1000.0, ge=1, le=1000, description="At most this many times more per tick.")
    max_scale_down_rate: float = Field(2.0, ge=1, le=1000, description="At most this many times fewer per tick.")
    initial_scale: int = Field(
        0, ge=0, le=1000, description="Instances started on deploy; 0 (default) runs nothing until a request."
    )
    activation_scale: int = Field(1, ge=1, le=1000, description="Least instances whenever not at zero.")
    target_qps: float | None = Field(None, gt=0, le=1e6, description="Requests/s per instance at 100% utilisation.")
    target_cpu: float | None = Field(None, gt=0, le=1024, description="Cores per instance at 100% utilisation.")
    target_memory: Size | None = Field(None, gt=0, le=1024**4, description="Memory per instance at 100% utilisation.")
    schedules: list[ScalingWindow] = Field(
        default_factory=list, max_length=16, description="Scheduled minimums: cron windows that raise min."
    )
    prediction: bool = Field(False, description="Scale ahead of a steady ramp (short-horizon trend).")
    start_latency: Duration = Field(
        0.05, le=600, description="Expected instance start time: how far ahead the prediction looks."
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Scaling:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); lower min or raise max")
        if self.panic_window > self.stable_window:
            raise ValueError(
                f"panic_window ({self.panic_window:g}s) is longer than stable_window ({self.stable_window:g}s);"
                " the panic window must be the shorter one"
            )
        for name, value in (("initial_scale", self.initial_scale), ("activation_scale", self.activation_scale)):
            if value > self.max:
                raise ValueError(f"{name} ({value}) is above max ({self.max}); lower it or raise max")
        return self


class DestinationModel(_Strict):
    """`async.on_success` / `async.on_failure`: exactly one of `function`, `webhook` or `nats`."""

    function: str | None = Field(None, description="Another function, invoked asynchronously with the record.")
    webhook: str | None = Field(None, description="An http(s) URL the record is POSTed to, signed (Standard Webhooks).")
    nats: str | None = Field(None, description="A NATS subject the record is published on.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DestinationModel:
        given = [name for name in ("function", "webhook", "nats") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of function, webhook or nats (got {', '.join(given) or 'none'})")
        if self.webhook and not re.match(r"^https?://[^\s/]+", self.webhook):
            raise ValueError(f"webhook {self.webhook!r} is not an http(s) URL")
        if self.function:
            validate_name(self.function)
        return self

    def destination(self) -> Destination:
        return Destination(function=self.function, webhook=self.webhook, nats=self.nats)


class Async(_Strict):
    """`async:` how asynchronous invocations of the function are queued, retried and delivered."""

    concurrency: int = Field(10, ge=1, le=10_000, description="Tasks of this function running at once.")
    max_retries: int = Field(2, ge=0, le=100, description="Retries after a retryable failure (Lambda: 2).")
    max_event_age: Duration = Field(
        6 * 3600.0, ge=1, le=7 * 86400, description="A task older than this when picked is dead-lettered (expired)."
    )
    max_backlog: int = Field(
        100_000, ge=1, le=10_000_000, description="Waiting tasks above which submissions get 429 (backpressure)."
    )
    max_body: Size = Field(1024 * 1024, ge=1, le=100 * 1000**2, description="Largest async request body.")
    on_success: DestinationModel | None = Field(None, description="Where successful results go.")
    on_failure: DestinationModel | None = Field(None, description="Where dead-lettered or expired tasks go.")

    def spec(self) -> AsyncSpec:
        return AsyncSpec(
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            max_event_age_s=self.max_event_age,
            max_backlog=self.max_backlog,
            max_body_bytes=self.max_body,
            on_success=self.on_success.destination() if self.on_success else None,
            on_failure=self.on_failure.destination() if self.on_failure else None,
        )


class Package(_Strict):
    """`package:` how `nest deploy` builds the code package (see nest/contracts/chunks.py)."""

    codec: Literal["zstd", "lz4", "none"] = Field(
        "zstd", description="Chunk compression: zstd (smaller), lz4 (faster) or none (already compressed data)."
    )
    layout: Literal["tree", "archive"] = Field(
        "archive",
        description="How nodes keep the code: archive (the default: the Python sources stay in one file that"
        " modules are imported from, every other file is a file; 3-5x faster to a first start on a new node) or"
        " tree (every file a file: for code that reads its own .py files as files, e.g. lists or runs them).",
    )


class Http(_Strict):
    """`http:` extra gateway routes for the function, and the methods it accepts."""

    methods: list[str] = Field(default_factory=list, description="Allowed HTTP methods; empty allows all.")
    paths: list[str] = Field(
        default_factory=list, max_length=32, description="Extra gateway paths: exact '/hello' or prefix '/api/*'."
    )

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        upper = [method.upper() for method in methods]
        unknown = sorted(set(upper) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown method(s) {unknown} (expected some of {sorted(HTTP_METHODS)})")
        return upper

    @field_validator("paths")
    @classmethod
    def _well_formed_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            bare = path.removesuffix("/*")
            if not path.startswith("/") or "*" in bare or ".." in path or "//" in path or len(path) > 256:
                raise ValueError(f"{path!r} is not a route path (expected e.g. '/hello' or '/api/*')")
            reserved = ("/function", "/api", "/metrics", "/healthz", "/readyz", "/async-function")
            if any(bare == prefix or bare.startswith(prefix + "/") for prefix in reserved):
                raise ValueError(f"{path!r} is reserved by the gateway; choose another path")
        return paths


class Manifest(_Strict):
    """`nest.yaml`: one function. See the module docstring for an example."""

    name: str = Field(description="Function name: a DNS label, at most 63 characters.")
    handler: str = Field("main:handle", description="module:callable, e.g. 'main:handle' or 'app:app' for ASGI.")
    handler_style: HandlerStyle = Field(HandlerStyle.NATIVE, description="native | asgi | lambda")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for every instance.")
    timeout: Duration = Field(30.0, gt=0, le=900, description="Per-invocation time limit (at most 15m).")
    memory: Size = Field(256 * 1024**2, ge=32 * 1024**2, le=16 * 1024**3, description="Memory per instance.")
    concurrency: int = Field(10, ge=1, le=1000, description="Max in-flight requests per instance.")
    max_body: Size = Field(6 * 1000**2, ge=1, le=100 * 1000**2, description="Largest request body accepted.")
    debug: bool = Field(False, description="Include stack traces in error responses.")
    pool: str = Field(
        "default",
        description="Warm pool to fork instances from: 'default', a pool the operator declared with"
        " `nest up --pool NAME=modules`, or 'none' (a fresh interpreter per instance).",
    )
    scaling: Scaling = Field(default_factory=Scaling)  # type: ignore[arg-type]
    http: Http = Field(default_factory=Http)
    package: Package = Field(default_factory=Package)  # type: ignore[arg-type]
    async_: Async = Field(default_factory=Async, alias="async")  # type: ignore[arg-type]

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        try:
            return validate_name(name)
        except InvalidInput as exc:
            raise ValueError(exc.problem) from None

    @field_validator("pool")
    @classmethod
    def _pool_name(cls, pool: str) -> str:
        if not NAME_PATTERN.match(pool) or len(pool) > NAME_MAX:
            raise ValueError(f"{pool!r} is not a pool name (e.g. 'default', 'none' or a declared pool)")
        return pool

    @field_validator("handler")
    @classmethod
    def _module_colon_callable(cls, handler: str) -> str:
        module, _, attribute = handler.partition(":")
        dotted = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
        if not (dotted.match(module) and dotted.match(attribute)):
            raise ValueError(f"{handler!r} is not 'module:callable' (expected e.g. 'main:handle')")
        return handler

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, env: Any) -> Any:
        if not isinstance(env, dict):
            return env
        result: dict[str, str] = {}
        for key, value in env.items():
            if not isinstance(key, str) or not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
            if key.startswith("NEST_"):
                raise ValueError(f"{key!r}: names starting with NEST_ are reserved for the platform")
            if isinstance(value, dict | list) or value is None:
                raise ValueError(f"{key}: value must be a string, number or boolean")
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return result

    def scaling_spec(self) -> ScalingSpec:
        """The autoscaler's view of `scaling:`; `target_concurrency` defaults to `concurrency`."""
        target = self.scaling.target_concurrency or float(self.concurrency)
        return ScalingSpec(
            min=self.scaling.min,
            max=self.scaling.max,
            target_concurrency=target,
            utilization=self.scaling.utilization,
            scale_down_delay_s=self.scaling.scale_down_delay,
            scale_to_zero_grace_s=self.scaling.scale_to_zero_grace,
            stable_window_s=self.scaling.stable_window,
            panic_window_s=self.scaling.panic_window,
            panic_threshold=self.scaling.panic_threshold,
            max_scale_up_rate=self.scaling.max_scale_up_rate,
            max_scale_down_rate=self.scaling.max_scale_down_rate,
            initial_scale=self.scaling.initial_scale,
            activation_scale=self.scaling.activation_scale,
            target_qps=self.scaling.target_qps,
            target_cpu=self.scaling.target_cpu,
            target_memory=float(self.scaling.target_memory) if self.scaling.target_memory is not None else None,
            schedules=tuple(
                ScalingSchedule(window.cron, window.timezone, window.duration, window.min)
                for window in self.scaling.schedules
            ),
            prediction=self.scaling.prediction,
            start_latency_s=self.scaling.start_latency,
        )

    @property
    def function(self) -> FunctionName:
        return FunctionName(self.name)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `nest schema` for the allowed keys)"
        elif item["type"] == "missing":
            message = "is required"
        problems.append((where, message))
    return problems


def load_manifest(data: Any) -> Manifest:
    """Validate a parsed `nest.yaml`; raise `ManifestError` listing every problem with its field."""
    if not isinstance(data, dict):
        raise ManifestError([("", f"{MANIFEST_FILE} must be a mapping of keys to values, got {type(data).__name__}")])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_problems(exc)) from None


def parse_manifest(text: str | bytes) -> Manifest:
    """Parse and validate the text of `nest.yaml`."""
    if len(text) > MANIFEST_MAX_BYTES:
        raise ManifestError([("", f"{MANIFEST_FILE} is larger than {MANIFEST_MAX_BYTES} bytes")])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError([("", f"{MANIFEST_FILE} is not valid YAML: {exc}")]) from None
    return load_manifest(data)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `nest.yaml`, for editors (`nest schema > nest.schema.json`)."""
    schema = Manifest.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "nest.yaml"
    return schema
