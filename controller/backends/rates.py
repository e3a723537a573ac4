"""Per-version CPU (mean cores) and memory (bytes) from per-instance samples of cumulative counters.

Pure: no I/O, no clock reads; `now` is an argument (monotonic seconds) and the state is a value the caller keeps
between calls. `controller/backends/usage.py` reads the counters once per autoscaler tick; this turns them into
what `ScalingSpec.target_cpu` and `target_memory` are compared with:

    cores(version)  = Σ over its instances of (cpu_s now − cpu_s at the instance's previous sample)
                                              / (now − time of that sample)
    memory(version) = Σ over its instances of the bytes sampled now

Each instance is rated over *its own* interval, so a sample that could not be read (the instance keeps its
previous one) makes the next rate span two intervals instead of losing the CPU in between. The rules for what a
counter cannot tell:

- **first sample** of an instance: a baseline, no rate. Its counter holds its start-up (interpreter, imports,
  the function's init), which is not load: counting it would read a scale-up's own starts as demand and scale
  up again.
- **reset** (the counter went down, or the process behind the instance changed, `incarnation`): a new baseline,
  for the same reason. Prometheus' `rate()` would count the new value from zero instead; here that value is
  mostly start-up.
- **gone** (an instance not in the samples): forgotten; the CPU it used since its last sample is not reported.
- a version none of whose instances has a rate yet reports `cores=None` (unknown), not 0: the autoscaler then
  records nothing for CPU this tick rather than a fall to zero. Likewise memory when no sample had it.

So a version's figure can only *under*-count, for one tick, the instances that just started or restarted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nest.contracts.model import VersionKey


@dataclass(frozen=True, slots=True)
class Sample:
    """One instance's counters, read at (about) `now`."""

    key: VersionKey
    incarnation: int
    """Identifies the process behind the instance (its pid): a change means a new process, so a new counter."""
    cpu_s: float | None
    """CPU seconds (user + system) the instance has used since it started; None if it could not be read."""
    memory_bytes: float | None
    """Memory the instance holds now; None if it could not be read."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """An instance's previous CPU reading: what the next one is rated against."""

    at: float
    incarnation: int
    cpu_s: float


@dataclass(frozen=True, slots=True)
class Usage:
    cores: float | None
    """Mean cores in use over the interval by the instances that have a rate; None if none has one yet."""
    memory_bytes: float | None
    """Bytes held now by the instances that reported memory; None if none did."""
    instances: int
    """Instances sampled."""


def advance(
    baselines: Mapping[str, Baseline], samples: Mapping[str, Sample], now: float
) -> tuple[dict[str, Baseline], dict[VersionKey, Usage]]:
    """The next baselines, and each sampled version's usage at `now`; `samples` and the result keyed by instance."""
    kept: dict[str, Baseline] = {}
    cores: dict[VersionKey, float | None] = {}
    memory: dict[VersionKey, float | None] = {}
    counted: dict[VersionKey, int] = {}
    for instance, sample in samples.items():
        key = sample.key
        counted[key] = counted.get(key, 0) + 1
        cores.setdefault(key, None)
        memory.setdefault(key, None)
        if sample.memory_bytes is not None and sample.memory_bytes >= 0:
            memory[key] = (memory[key] or 0.0) + sample.memory_bytes
        before = baselines.get(instance)
        rate, kept_baseline = _rated(before, sample, now)
        if kept_baseline is not None:
            kept[instance] = kept_baseline
        if rate is not None:
            cores[key] = (cores[key] or 0.0) + rate
    usage = {key: Usage(cores[key], memory[key], counted[key]) for key in counted}
    return kept, usage


def _rated(before: Baseline | None, sample: Sample, now: float) -> tuple[float | None, Baseline | None]:
    """(mean cores since `before`, or None) and the baseline to keep for the next call."""
    cpu_s = sample.cpu_s
    if cpu_s is None or cpu_s < 0:
        return None, before if before is not None and before.incarnation == sample.incarnation else None
    fresh = Baseline(now, sample.incarnation, cpu_s)
    if before is None or before.incarnation != sample.incarnation or cpu_s < before.cpu_s:
        return None, fresh  # first sample, or a new process / a reset counter: a baseline
    if now <= before.at:
        return None, before  # no time has passed (or the clock went back): keep rating from the old sample
    return (cpu_s - before.cpu_s) / (now - before.at), fresh
