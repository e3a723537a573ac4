"""The synthetic workloads of the trace suite, generated reproducibly from a seed.

`scripts/make_traces.py` writes the suite's files (tests/bench/traces/, one fixed seed per shape);
`tests/bench/bench_autoscaler.py --seeds N` replays N more draws of every shape, so that a verdict on one trace
is not the luck of one draw; `nest scale simulate --shape ramp --seed 7` replays one draw without a file.
Shapes and parameters are documented in docs/autoscaling.md ("The trace suite"). Durations are log-normal
(median 0.5 s, σ 0.6, capped at 10 s) unless said otherwise.

Pure: a `random.Random` in, rows out. E.g. `generate("ramp", seed=SEED + 3)` is the suite's ramp file.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from autoscaler.simulation.traces import DEFAULT_FUNCTION, Request, Trace, TraceError

if TYPE_CHECKING:
    from collections.abc import Callable

SEED = 20261123
"""The suite's seed: shape number i (in `SHAPES` order) is drawn from `random.Random(SEED + i)`."""
MEDIAN_DURATION_S = 0.5
DURATION_SIGMA = 0.6

Row = tuple[float, float, str]
"""(arrival_s, duration_s, function); "" for the single-function shapes."""


def duration(rng: random.Random, median_s: float = MEDIAN_DURATION_S, sigma: float = DURATION_SIGMA) -> float:
    return min(10.0, max(0.001, rng.lognormvariate(math.log(median_s), sigma)))


def poisson(
    rng: random.Random, rate_at: Callable[[float], float], start_s: float, end_s: float, peak_rps: float
) -> list[float]:
    """Arrivals of a non-homogeneous Poisson process by thinning (Lewis and Shedler): rate_at(t) <= peak_rps."""
    arrivals: list[float] = []
    now = start_s
    while True:
        now += rng.expovariate(peak_rps)
        if now >= end_s:
            return arrivals
        if rng.random() * peak_rps < rate_at(now):
            arrivals.append(now)


def steady(rng: random.Random) -> list[Row]:
    """20 requests/s for 10 minutes."""
    return [(t, duration(rng), "") for t in poisson(rng, lambda t: 20.0, 0.0, 600.0, 20.0)]


def diurnal(rng: random.Random) -> list[Row]:
    """One day compressed into 20 minutes: 2 requests/s at night to 30 at noon, a raised cosine."""
    period = 1200.0

    def rate(t: float) -> float:
        return 2.0 + 28.0 * (1 - math.cos(2 * math.pi * t / period)) / 2

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, period, 30.0)]


def spike(rng: random.Random) -> list[Row]:
    """10 requests/s for 2 minutes, 100/s (10x within 1 s) for 1 minute, 10/s for 2 minutes."""

    def rate(t: float) -> float:
        return 100.0 if 120.0 <= t < 180.0 else 10.0

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 300.0, 100.0)]


def ramp(rng: random.Random) -> list[Row]:
    """From 0 to 60 requests/s linearly over 5 minutes, then 60/s for 1 minute."""

    def rate(t: float) -> float:
        return min(60.0, 60.0 * t / 300.0)

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 360.0, 60.0)]


def on_off(rng: random.Random) -> list[Row]:
    """Five bursts: 30 s at 30 requests/s, then 90 s of nothing."""

    def rate(t: float) -> float:
        return 30.0 if t % 120.0 < 30.0 else 0.0

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 600.0, 30.0)]


def azure(rng: random.Random) -> list[Row]:
    """120 functions for 30 minutes, shaped after the Azure Functions 2019 trace (Shahrad et al., ATC '20).

    Rates: log10(invocations per hour) ~ Normal(0.22, 1.77), fitted to the paper's "45% of applications are
    invoked at most once per hour, 81% at most once per minute", capped at 2/s; rates span over six orders of
    magnitude. 15% of functions are timer-triggered (a fixed period of 1, 5 or 15 minutes, as the paper's
    timers), the rest Poisson. Durations: each function's median is log-normal (median 0.6 s, σ 1.5, within
    5 ms .. 60 s, like the paper's "50% of functions run under 1 s on average"), each call σ 0.4 around it.
    """
    rows: list[Row] = []
    horizon = 1800.0
    for number in range(120):
        name = f"f{number:03d}"
        median = min(60.0, max(0.005, rng.lognormvariate(math.log(0.6), 1.5)))
        if rng.random() < 0.15:
            period = rng.choice((60.0, 300.0, 900.0))
            arrivals = _frange(rng.uniform(0, period), horizon, period)
        else:
            per_hour = 10 ** rng.gauss(0.22, 1.77)
            rate = min(2.0, per_hour / 3600.0)
            arrivals = poisson(rng, _constant(rate), 0.0, horizon, rate)
        rows.extend((t, min(60.0, duration(rng, median, 0.4)), name) for t in arrivals)
    return sorted(rows)


def _constant(rate: float) -> Callable[[float], float]:
    return lambda t: rate


def _frange(start: float, end: float, step: float) -> list[float]:
    return [start + step * index for index in range(int((end - start) // step) + 1) if start + step * index < end]


SHAPES: dict[str, Callable[[random.Random], list[Row]]] = {
    "steady": steady,
    "diurnal": diurnal,
    "spike": spike,
    "ramp": ramp,
    "onoff": on_off,
    "azure": azure,
}


def suite_seed(name: str) -> int:
    """The seed of the suite's file for shape `name`."""
    return SEED + list(SHAPES).index(name)


def rows_of(name: str, seed: int) -> list[Row]:
    if name not in SHAPES:
        raise TraceError("--shape", f"no shape {name!r}; choose one of {', '.join(SHAPES)}")
    return SHAPES[name](random.Random(seed))


def generate(name: str, *, seed: int | None = None) -> Trace:
    """One draw of shape `name` (by default the suite's own), rounded to the millisecond as the suite's CSV
    files are: `generate(name)` replays exactly what the file holds."""
    rows = rows_of(name, suite_seed(name) if seed is None and name in SHAPES else seed or 0)
    requests = [
        Request(round(arrival, 3), round(length, 3), function or DEFAULT_FUNCTION) for arrival, length, function in rows
    ]
    shown = f"{name}@{seed}" if seed is not None else name
    return Trace(tuple(sorted(requests, key=lambda request: request.arrival_s)), name=shown)


def to_csv(rows: list[Row]) -> str:
    """The suite's file format: `arrival_s,duration_s[,function]`, millisecond precision."""
    with_function = any(function for _, _, function in rows)
    lines = ["arrival_s,duration_s,function" if with_function else "arrival_s,duration_s"]
    for arrival, length, function in rows:
        cells = [f"{arrival:.3f}", f"{length:.3f}"] + ([function] if with_function else [])
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
