"""Warm pools as operators declare them: the pools file of `nest up --pools FILE`, its model and validation.

Every error names the field and the fix, e.g. `pools.science.max_idle: 2 is below min_idle (4)`. Unknown keys
are errors. The controller (`controller/pooling.py`) turns a `PoolSettings` into running zygotes; the CLI reads
and validates the file before anything starts, so a bad file is refused with one clear message.

```yaml
pools:
  default:                  # optional: tunes the built-in pool (its preloads are added to the runtime's)
    min_idle: 2
  science:
    preload: [numpy, pandas]   # imported once by the zygote: a function naming this pool skips the import
    min_idle: 1             # generic instances kept forked ahead of need
    max_idle: 6             # reactive growth stops here
    idle_ttl: 10m           # an idle instance older than this is recycled (fresh pages, fresh zygote state)
    quiet_period: 60s       # after this long without claims draining the pool, the idle target steps back down
```
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nest.contracts.errors import InvalidInput
from nest.contracts.manifest import NAME_MAX, NAME_PATTERN, Duration

POOLS_MAX_BYTES = 64 * 1024
POOLS_MAX = 16
"""Each pool is a zygote process plus its idle instances: sixteen is more than one machine should hold."""
PRELOAD_MAX = 64
IDLE_MAX = 64
RESERVED = frozenset({"none"})
"""`pool: none` means a fresh interpreter: no pool may take that name."""
MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
DEFAULT_MIN_IDLE = 2
DEFAULT_MAX_IDLE = 8


class PoolsFileError(InvalidInput):
    """Problems in a pools file; `problems` lists `(field, message)` pairs, the message is all of them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        text = "; ".join(f"{where}: {what}" if where else what for where, what in problems)
        super().__init__(problems[0][0] if problems else "", text)
        self.message = text
        self.problems = problems


class PoolSettings(BaseModel):
    """One pool: what its zygote preloads and how many idle instances it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preload: tuple[str, ...] = Field(default=(), max_length=PRELOAD_MAX, description="Modules the zygote imports once.")
    min_idle: int = Field(default=DEFAULT_MIN_IDLE, ge=0, le=IDLE_MAX, description="Idle instances kept forked ahead.")
    max_idle: int = Field(default=DEFAULT_MAX_IDLE, ge=0, le=IDLE_MAX, description="Upper bound of reactive growth.")
    idle_ttl: Duration = Field(
        default=600.0, ge=1, le=86400, description="Idle instances older than this are recycled."
    )
    quiet_period: Duration = Field(
        default=60.0, ge=1, le=86400, description="Without draining claims this long, shrink."
    )

    @field_validator("preload", mode="before")
    @classmethod
    def _module_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{value!r} is not a list of modules (expected e.g. [numpy, pandas])")
        for module in value:
            if not isinstance(module, str) or not MODULE_PATTERN.match(module):
                raise ValueError(f"{module!r} is not an importable module name (expected e.g. 'numpy' or 'a.b')")
        if len(set(value)) != len(value):
            raise ValueError("lists a module twice")
        return tuple(value)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> PoolSettings:
        if self.max_idle < self.min_idle:
            raise ValueError(f"max_idle ({self.max_idle}) is below min_idle ({self.min_idle}); raise max_idle")
        return self


class PoolsFile(BaseModel):
    """The whole file: `pools:` maps a pool name to its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: dict[str, PoolSettings] = Field(default_factory=dict, max_length=POOLS_MAX)

    @field_validator("pools", mode="before")
    @classmethod
    def _pool_names(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"must map pool names to settings, got {type(value).__name__}")
        for name in value:
            if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > NAME_MAX:
                raise ValueError(f"{name!r} is not a pool name (a DNS label such as 'science')")
            if name in RESERVED:
                raise ValueError(f"{name!r} is reserved (`pool: none` means a fresh interpreter); pick another name")
        return {name: {} if settings is None else settings for name, settings in value.items()}


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (allowed: preload, min_idle, max_idle, idle_ttl, quiet_period under a pool name)"
        problems.append((where, message))
    return problems


def load_pools(data: Any) -> dict[str, PoolSettings]:
    """Validate a parsed pools file; raise `PoolsFileError` listing every problem with its field."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PoolsFileError([("", f"a pools file must be a mapping with a `pools:` key, got {type(data).__name__}")])
    try:
        return dict(PoolsFile.model_validate(data).pools)
    except ValidationError as exc:
        raise PoolsFileError(_problems(exc)) from None


def parse_pools(text: str | bytes) -> dict[str, PoolSettings]:
    """Parse and validate the text of a pools file (YAML)."""
    if len(text) > POOLS_MAX_BYTES:
        raise PoolsFileError([("", f"the pools file is larger than {POOLS_MAX_BYTES} bytes")])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PoolsFileError([("", f"not valid YAML: {exc}")]) from None
    return load_pools(data)
