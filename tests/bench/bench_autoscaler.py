"""bench_autoscaler: the trace suite replayed through every policy; does Nest's policy dominate Knative's KPA?

For each trace in tests/bench/traces/ (regenerate with scripts/make_traces.py) and each policy (nest, kpa,
keepalive-10m, static-1), the simulator (autoscaler/simulation/) reports the delayed-request % and the
instance-seconds. Nest dominates KPA on a trace when it delays no more requests at no more instance-seconds;
the target is dominance on every trace and a >= 20% strict improvement of one figure on spike, ramp and
diurnal. Both are modelled alike: same start latency, per-instance concurrency and 70% target.

A parameter sweep (Nest: scale_down_delay x utilization x trend prediction; KPA: stable window x target
utilisation; keep-alive: duration) is plotted as delayed % vs instance-seconds summed over spike, ramp and
diurnal, with each family's Pareto frontier (PNG, matplotlib Agg); for each Nest configuration the JSON lists the
traces of the suite on which it dominates KPA's defaults.

Robustness (`--seeds N`, default 6): each trace of the suite is one seeded draw of its shape, so a verdict on
it can be the luck of that draw. N more draws of every shape (autoscaler/simulation/shapes.py) are replayed
through Nest and KPA; per shape the JSON gives on how many draws Nest dominates and the medians of Nest's
instance-seconds and delayed requests as multiples of KPA's. Prints one JSON line. Virtual time: ~3 min here (2 busy
cores), ~20 s with --no-sweep.

Run: .venv/bin/python -m tests.bench.bench_autoscaler [--concurrency 4] [--png /tmp/nest_autoscaler_pareto.png]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler.simulation.model import Settings, simulate
from autoscaler.simulation.policies import KeepAlivePolicy, KpaConfig, KpaPolicy, make_policy, nest_spec, tuned
from autoscaler.simulation.report import dominates, figures, improvement
from autoscaler.simulation.shapes import SHAPES, generate, suite_seed
from autoscaler.simulation.traces import load_trace

if TYPE_CHECKING:
    from collections.abc import Callable

    from autoscaler.simulation.policies import Policy
    from autoscaler.simulation.report import Figures
    from autoscaler.simulation.traces import Trace

TRACES = Path(__file__).resolve().parent / "traces"
SUITE = ("steady", "diurnal", "spike", "ramp", "onoff", "azure")
POLICIES = ("nest", "kpa", "keepalive-10m", "static-1")
MUST_IMPROVE = ("spike", "ramp", "diurnal")
REQUIRED_IMPROVEMENT = 0.2
SWEEP_TRACES = MUST_IMPROVE


def compare(traces: dict[str, Trace], settings: Settings) -> tuple[dict[str, Any], dict[str, Figures]]:
    results: dict[str, Any] = {}
    kpa_runs: dict[str, Figures] = {}
    for name, trace in traces.items():
        runs: dict[str, Figures] = {}
        for policy in POLICIES:
            factory = make_policy(policy, concurrency=settings.concurrency, start_latency_s=settings.start_latency_s)
            runs[policy] = figures(simulate(trace, factory, settings, name=policy))
        nest, kpa = runs["nest"], runs["kpa"]
        kpa_runs[name] = kpa
        results[name] = {
            **{
                policy: {
                    "delayed_pct": figure.delayed_pct,
                    "cold_delayed_pct": figure.cold_delayed_pct,
                    "wait_p99_ms": figure.wait_p99_ms,
                    "instance_seconds": figure.instance_seconds,
                }
                for policy, figure in runs.items()
            },
            "nest_dominates_kpa": dominates(nest, kpa),
            "nest_best_improvement": improvement(nest, kpa),
        }
    return results, kpa_runs


def _draw(job: tuple[str, int, Settings]) -> tuple[str, float, float, bool]:
    """One draw of a shape through Nest and KPA: (shape, cost ratio, delayed ratio, Nest dominates)."""
    name, seed, settings = job
    trace = generate(name, seed=seed)
    runs = {
        policy: figures(
            simulate(
                trace,
                make_policy(policy, concurrency=settings.concurrency, start_latency_s=settings.start_latency_s),
                settings,
                name=policy,
            )
        )
        for policy in ("nest", "kpa")
    }
    nest, kpa = runs["nest"], runs["kpa"]
    delayed = nest.delayed / kpa.delayed if kpa.delayed else (1.0 if not nest.delayed else float("inf"))
    return name, nest.instance_seconds / kpa.instance_seconds, delayed, dominates(nest, kpa)


def robustness(settings: Settings, seeds: int) -> dict[str, Any]:
    """`seeds` more draws of every shape (seeds the suite's own plus 1000, 2000, ...), Nest against KPA."""
    jobs = [(name, suite_seed(name) + 1000 * draw, settings) for name in SHAPES for draw in range(1, seeds + 1)]
    with ProcessPoolExecutor() as pool:
        draws = list(pool.map(_draw, jobs))
    result: dict[str, Any] = {}
    for name in SHAPES:
        mine = [item for item in draws if item[0] == name]
        result[name] = {
            "nest_dominates_kpa": f"{sum(item[3] for item in mine)}/{len(mine)}",
            "instance_seconds_vs_kpa_median": round(statistics.median(item[1] for item in mine), 3),
            "instance_seconds_vs_kpa_range": [round(min(i[1] for i in mine), 3), round(max(i[1] for i in mine), 3)],
            "delayed_vs_kpa_median": round(statistics.median(item[2] for item in mine), 3),
        }
    return result


def sweep(
    traces: dict[str, Trace], settings: Settings, baseline: dict[str, Any]
) -> tuple[dict[str, list[tuple[str, float, float]]], list[dict[str, Any]]]:
    """Points (label, delayed %, instance-seconds) per family, summed over the sweep traces; and per Nest
    configuration, the traces of the whole suite on which it dominates KPA's defaults."""
    spec = nest_spec(concurrency=settings.concurrency, start_latency_s=settings.start_latency_s)
    families: dict[str, list[tuple[str, Callable[[], Policy]]]] = {"nest": [], "kpa": [], "keepalive": []}
    for delay, utilization, prediction in itertools.product((0.0, 10.0, 30.0), (0.7, 0.8), (True, False)):
        overrides = {"scale_down_delay_s": delay, "utilization": utilization, "prediction": prediction}
        label = f"delay {delay:g}s util {utilization:g}" + ("" if prediction else " no-trend")
        families["nest"].append((label, tuned(spec, **overrides)))
    for window, utilization in itertools.product((30.0, 60.0, 120.0), (0.5, 0.7, 0.9)):
        config = KpaConfig(
            target=settings.concurrency * utilization, stable_window_s=window, panic_window_s=window / 10
        )
        families["kpa"].append((f"window {window:g}s util {utilization:g}", lambda c=config: KpaPolicy(c)))
    for keep in (60.0, 300.0, 600.0):
        families["keepalive"].append(
            (f"keep {keep:g}s", lambda k=keep: KeepAlivePolicy(k, concurrency=settings.concurrency))
        )
    points: dict[str, list[tuple[str, float, float]]] = {}
    nest_rows: list[dict[str, Any]] = []
    for family, configs in families.items():
        for label, factory in configs:
            runs = {
                name: figures(simulate(trace, factory, settings, name=label))
                for name, trace in traces.items()
                if family == "nest" or name in SWEEP_TRACES
            }
            plotted = [runs[name] for name in SWEEP_TRACES]
            delayed = 100.0 * sum(run.delayed for run in plotted) / sum(run.requests for run in plotted)
            points.setdefault(family, []).append(
                (label, round(delayed, 3), round(sum(r.instance_seconds for r in plotted), 1))
            )
            if family == "nest":
                wins = [name for name, run in runs.items() if dominates(run, baseline[name])]
                nest_rows.append({"config": label, "dominates_kpa_on": wins})
    return points, nest_rows


def frontier(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats on both delayed % and instance-seconds, by cost."""
    ordered = sorted(points, key=lambda point: (point[2], point[1]))
    best: list[tuple[str, float, float]] = []
    for point in ordered:
        if not best or point[1] < best[-1][1]:
            best.append(point)
    return best


def plot(points: dict[str, list[tuple[str, float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    for (family, items), color in zip(points.items(), ("tab:green", "tab:blue", "tab:orange"), strict=False):
        axes.scatter([p[2] for p in items], [p[1] for p in items], color=color, alpha=0.5, label=family)
        edge = frontier(items)
        axes.plot([p[2] for p in edge], [p[1] for p in edge], color=color)
        for label, delayed, cost in edge:
            axes.annotate(label, (cost, delayed), fontsize=6, alpha=0.8)
    axes.set_xlabel(f"instance-seconds ({' + '.join(SWEEP_TRACES)})")
    axes.set_ylabel("requests delayed (%, log scale)")
    axes.set_yscale("log")
    axes.set_title("Pareto frontier per policy family (lower left is better)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--start-latency", type=float, default=0.05)
    parser.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "nest_autoscaler_pareto.png")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--seeds", type=int, default=6, help="more draws of every shape (0: none)")
    args = parser.parse_args()
    started = time.perf_counter()
    settings = Settings(concurrency=args.concurrency, start_latency_s=args.start_latency)
    traces = {name: load_trace(TRACES / f"{name}.csv") for name in SUITE}
    results, kpa = compare(traces, settings)
    target_met = all(item["nest_dominates_kpa"] for item in results.values()) and all(
        results[name]["nest_best_improvement"] >= REQUIRED_IMPROVEMENT for name in MUST_IMPROVE
    )
    report: dict[str, Any] = {
        "bench": "autoscaler",
        "concurrency": args.concurrency,
        "start_latency_s": args.start_latency,
        "traces": results,
        "nest_dominates_kpa_on": [name for name, item in results.items() if item["nest_dominates_kpa"]],
        "target_met": target_met,
    }
    if args.seeds > 0:
        report["robustness"] = {"seeds": args.seeds, "shapes": robustness(settings, args.seeds)}
    if not args.no_sweep:
        points, nest_rows = sweep(traces, settings, kpa)
        plot(points, args.png)
        report["pareto_png"] = str(args.png)
        report["frontier"] = {family: frontier(items) for family, items in points.items()}
        report["nest_sweep"] = nest_rows
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
