"""The figures of one simulated run: who waited for a cold start, for how long, and what the instances cost.

- delayed: requests that found no free slot on a ready instance and waited in the activator's queue (count, %),
  for a cold start or because every slot was busy; cold-delayed: those of them served by an instance that was
  still starting when they arrived (delayed by a cold start in the narrow sense);
- wait p50/p99: over all requests, in milliseconds (0 for a request served at once);
- instance-seconds: the cost, from a scale-up decision until the instance is gone (starting time included);
- idle instance-seconds: the waste, the part of that with nothing in flight;
- scale events: decisions that changed the instance count; the decision log lists every change of the desired
  count with its reason.

Pure: no I/O; `nest scale simulate` and `tests/bench/bench_autoscaler.py` print what this computes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from autoscaler.simulation.model import WAITED_S

if TYPE_CHECKING:
    from autoscaler.simulation.model import Change, Outcome


@dataclass(frozen=True, slots=True)
class Figures:
    trace: str
    policy: str
    requests: int
    delayed: int
    delayed_pct: float
    cold_delayed: int
    cold_delayed_pct: float
    wait_p50_ms: float
    wait_p99_ms: float
    instance_seconds: float
    idle_instance_seconds: float
    scale_events: int


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: e.g. p99 of 200 values is the 198th smallest. 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


def figures(outcome: Outcome) -> Figures:
    waits = [wait for function in outcome.functions for wait in function.waits]
    delayed = sum(1 for wait in waits if wait > WAITED_S)
    cold = sum(function.cold for function in outcome.functions)
    return Figures(
        trace=outcome.trace,
        policy=outcome.policy,
        requests=len(waits),
        delayed=delayed,
        delayed_pct=round(100.0 * delayed / len(waits), 3) if waits else 0.0,
        cold_delayed=cold,
        cold_delayed_pct=round(100.0 * cold / len(waits), 3) if waits else 0.0,
        wait_p50_ms=round(percentile(waits, 0.50) * 1000, 2),
        wait_p99_ms=round(percentile(waits, 0.99) * 1000, 2),
        instance_seconds=round(sum(function.instance_seconds for function in outcome.functions), 1),
        idle_instance_seconds=round(sum(function.idle_instance_seconds for function in outcome.functions), 1),
        scale_events=sum(function.scale_events for function in outcome.functions),
    )


def decision_log(outcome: Outcome, *, limit: int = 50) -> list[Change]:
    """The first `limit` changes of the desired count, in time order across functions."""
    changes = [change for function in outcome.functions for change in function.changes]
    return sorted(changes, key=lambda change: change.time)[:limit]


def to_json(outcome: Outcome, *, log_limit: int = 50) -> dict[str, Any]:
    return {
        **asdict(figures(outcome)),
        "settings": asdict(outcome.settings),
        "decisions": [asdict(change) for change in decision_log(outcome, limit=log_limit)],
    }


def dominates(challenger: Figures, incumbent: Figures) -> bool:
    """No more delayed requests at no more instance-seconds."""
    return challenger.delayed <= incumbent.delayed and challenger.instance_seconds <= incumbent.instance_seconds


def improvement(challenger: Figures, incumbent: Figures) -> float:
    """The larger relative improvement of the two figures, e.g. 0.25 for 25% fewer instance-seconds."""
    delayed = 1 - challenger.delayed / incumbent.delayed if incumbent.delayed else 0.0
    cost = 1 - challenger.instance_seconds / incumbent.instance_seconds if incumbent.instance_seconds else 0.0
    return round(max(delayed, cost), 4)
