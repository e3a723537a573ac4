"""Write the autoscaler trace suite to tests/bench/traces/ (seeded: the same files on every run).

Shapes and parameters are documented in docs/autoscaling.md ("The trace suite"). Every trace is a CSV of
`arrival_s,duration_s[,function]` with millisecond precision. Durations are log-normal (median 0.5 s, σ 0.6,
capped at 10 s) unless said otherwise.

Run: .venv/bin/python scripts/make_traces.py [--out tests/bench/traces]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

SEED = 20261123
MEDIAN_DURATION_S = 0.5
DURATION_SIGMA = 0.6


def duration(rng: random.Random, median_s: float = MEDIAN_DURATION_S, sigma: float = DURATION_SIGMA) -> float:
    return min(10.0, max(0.001, rng.lognormvariate(math.log(median_s), sigma)))


def poisson(rng: random.Random, rate_at, start_s: float, end_s: float, peak_rps: float) -> list[float]:
    """Arrivals of a non-homogeneous Poisson process by thinning (Lewis and Shedler): rate_at(t) <= peak_rps."""
    arrivals, now = [], start_s
    while True:
        now += rng.expovariate(peak_rps)
        if now >= end_s:
            return arrivals
        if rng.random() * peak_rps < rate_at(now):
            arrivals.append(now)


def steady(rng: random.Random) -> list[tuple[float, float, str]]:
    """20 requests/s for 10 minutes."""
    return [(t, duration(rng), "") for t in poisson(rng, lambda t: 20.0, 0.0, 600.0, 20.0)]


def diurnal(rng: random.Random) -> list[tuple[float, float, str]]:
    """One day compressed into 20 minutes: 2 requests/s at night to 30 at noon, a raised cosine."""
    period = 1200.0

    def rate(t: float) -> float:
        return 2.0 + 28.0 * (1 - math.cos(2 * math.pi * t / period)) / 2

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, period, 30.0)]


def spike(rng: random.Random) -> list[tuple[float, float, str]]:
    """10 requests/s for 2 minutes, 100/s (10x within 1 s) for 1 minute, 10/s for 2 minutes."""

    def rate(t: float) -> float:
        return 100.0 if 120.0 <= t < 180.0 else 10.0

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 300.0, 100.0)]


def ramp(rng: random.Random) -> list[tuple[float, float, str]]:
    """From 0 to 60 requests/s linearly over 5 minutes, then 60/s for 1 minute."""

    def rate(t: float) -> float:
        return min(60.0, 60.0 * t / 300.0)

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 360.0, 60.0)]


def on_off(rng: random.Random) -> list[tuple[float, float, str]]:
    """Five bursts: 30 s at 30 requests/s, then 90 s of nothing."""

    def rate(t: float) -> float:
        return 30.0 if t % 120.0 < 30.0 else 0.0

    return [(t, duration(rng), "") for t in poisson(rng, rate, 0.0, 600.0, 30.0)]


def azure(rng: random.Random) -> list[tuple[float, float, str]]:
    """120 functions for 30 minutes, shaped after the Azure Functions 2019 trace (Shahrad et al., ATC '20).

    Rates: log10(invocations per hour) ~ Normal(0.22, 1.77), fitted to the paper's "45% of applications are
    invoked at most once per hour, 81% at most once per minute", capped at 2/s; rates span over six orders of
    magnitude. 15% of functions are timer-triggered (a fixed period of 1, 5 or 15 minutes, as the paper's
    timers), the rest Poisson. Durations: each function's median is log-normal (median 0.6 s, σ 1.5, within
    5 ms .. 60 s, like the paper's "50% of functions run under 1 s on average"), each call σ 0.4 around it.
    """
    rows: list[tuple[float, float, str]] = []
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
            arrivals = poisson(rng, lambda t, r=rate: r, 0.0, horizon, rate)
        rows.extend((t, min(60.0, duration(rng, median, 0.4)), name) for t in arrivals)
    return sorted(rows)


def _frange(start: float, end: float, step: float) -> list[float]:
    return [start + step * index for index in range(int((end - start) // step) + 1) if start + step * index < end]


SUITE = {"steady": steady, "diurnal": diurnal, "spike": spike, "ramp": ramp, "onoff": on_off, "azure": azure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/bench/traces")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for index, (name, shape) in enumerate(SUITE.items()):
        rng = random.Random(SEED + index)
        rows = shape(rng)
        with_function = any(function for _, _, function in rows)
        lines = ["arrival_s,duration_s,function" if with_function else "arrival_s,duration_s"]
        for arrival, length, function in rows:
            cells = [f"{arrival:.3f}", f"{length:.3f}"] + ([function] if with_function else [])
            lines.append(",".join(cells))
        path = args.out / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n")
        print(f"{path}: {len(rows)} requests, {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
