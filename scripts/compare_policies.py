"""Try Nest's policy with ScalingSpec overrides against KPA's defaults over the trace suite (virtual time).

    .venv/bin/python scripts/compare_policies.py "" "scale_down_delay_s=10, prediction=True"

Each argument is a set of keyword overrides (Python syntax, "" for the live defaults). Prints per trace `D` when
Nest dominates KPA (no more delayed requests at no more instance-seconds), the delayed % of both, and Nest's
instance-seconds as a multiple of KPA's. About 6 s per configuration at per-instance concurrency 4.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from autoscaler.simulation.model import Settings, simulate
from autoscaler.simulation.policies import NestPolicy, make_policy, nest_spec
from autoscaler.simulation.report import dominates, figures
from autoscaler.simulation.traces import load_trace

TRACES = Path(__file__).resolve().parents[1] / "tests" / "bench" / "traces"
SUITE = ("steady", "diurnal", "spike", "ramp", "onoff", "azure")
CONCURRENCY, START_S = 4, 0.05


def overrides(text: str) -> dict[str, object]:
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords if keyword.arg}


def main(arguments: list[str]) -> None:
    settings = Settings(concurrency=CONCURRENCY, start_latency_s=START_S)
    traces = {name: load_trace(TRACES / f"{name}.csv") for name in SUITE}
    kpa_factory = make_policy("kpa", concurrency=CONCURRENCY, start_latency_s=START_S)
    kpa = {name: figures(simulate(trace, kpa_factory, settings, name="kpa")) for name, trace in traces.items()}
    for argument in arguments or [""]:
        spec = nest_spec(concurrency=CONCURRENCY, start_latency_s=START_S, **overrides(argument))
        cells, everywhere = [], True
        for name, trace in traces.items():
            nest = figures(simulate(trace, lambda spec=spec: NestPolicy(spec), settings, name="nest"))
            won = dominates(nest, kpa[name])
            everywhere &= won
            ratio = nest.instance_seconds / kpa[name].instance_seconds
            cells.append(
                f"{name}:{'D' if won else '-'} {nest.delayed_pct:.2f}/{kpa[name].delayed_pct:.2f} {ratio:.3f}x"
            )
        print(f"{argument or 'defaults'}{'  ALL' if everywhere else ''} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
