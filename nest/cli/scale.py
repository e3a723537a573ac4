"""`nest scale ...`: scaling tools that run locally, no server needed.

```
nest scale simulate --trace tests/bench/traces/spike.csv                   # Nest's policy, a table
nest scale simulate --trace spike.csv --policy nest --policy kpa -o json   # compare, as JSON
nest scale simulate --shape ramp --seed 7 --policy nest --policy kpa       # a synthetic draw, no file
```
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path  # noqa: TC003 (typer reads the annotation at run time)
from typing import Annotated, Any

import typer
from rich.table import Table

from nest.cli.output import err, out, when
from nest.contracts.errors import InvalidInput
from nest.contracts.manifest import parse_duration

scale_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Scaling tools (local, no server needed).")
MAX_CONCURRENCY = 10_000
POLICY_NAMES = "nest, kpa, keepalive-<duration> (e.g. keepalive-10m) or static-<N>"


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


@scale_app.command("simulate")
def simulate_command(
    trace: Annotated[
        Path | None, typer.Option("--trace", help="CSV or JSONL: arrival_s, duration_s[, function]")
    ] = None,
    shape: Annotated[
        str | None,
        typer.Option(
            help="Instead of --trace: a synthetic shape of the trace suite (steady, diurnal, spike, ramp, onoff, azure)"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The draw of --shape (default: the suite's own file)")] = None,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help=f"Repeatable: {POLICY_NAMES} (default: nest)")
    ] = None,
    start_latency: Annotated[str, typer.Option(help="From scale-up to a ready instance, e.g. 50ms, 2s")] = "0.05s",
    concurrency: Annotated[
        int, typer.Option(help="Requests one instance serves at once (the target is 70% of it)")
    ] = 10,
    log: Annotated[int, typer.Option(min=0, max=100_000, help="Decisions to show from the log, first ones first")] = 15,
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.TABLE,
) -> None:
    """Replay a request trace through a scaling policy on a virtual clock and report what it would cost.

    Nest's policy is the same `decide` the live autoscaler runs. Figures: requests that waited for capacity
    (and those that waited for a cold start), wait p50/p99, instance-seconds, idle instance-seconds, scale
    events, and the decision log. See docs/autoscaling.md.
    """
    try:
        loaded = _trace(trace, shape, seed)
        runs = _run(loaded, policy or ["nest"], start_latency=start_latency, concurrency=concurrency)
    except InvalidInput as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        raise typer.Exit(1) from None
    from autoscaler.simulation.report import to_json

    if output is Format.JSON:
        results = [to_json(run, log_limit=log) for run in runs]
        sys.stdout.write(json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
        return
    _print_tables(runs, log)


def _trace(path: Path | None, shape: str | None, seed: int | None) -> Any:
    """The trace file, or a draw of a synthetic shape: exactly one of the two."""
    # Imported here: the simulator (and the decision engine under it) loads only for this command.
    from autoscaler.simulation.shapes import generate
    from autoscaler.simulation.traces import load_trace

    if (path is None) == (shape is None):
        raise InvalidInput("--trace", "give either --trace FILE or --shape NAME (not both)")
    if path is not None:
        if seed is not None:
            raise InvalidInput("--seed", "--seed draws a --shape; a --trace file is replayed as it is")
        return load_trace(path)
    assert shape is not None
    return generate(shape, seed=seed)


def _run(loaded: Any, policies: list[str], *, start_latency: str, concurrency: int) -> list[Any]:
    from autoscaler.simulation.model import Settings, simulate
    from autoscaler.simulation.policies import make_policy

    try:
        latency_s = parse_duration(start_latency)
    except ValueError as exc:
        raise InvalidInput("--start-latency", str(exc)) from None
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidInput("--concurrency", f"{concurrency} must be between 1 and {MAX_CONCURRENCY}")
    factories = [(name, make_policy(name, concurrency=concurrency, start_latency_s=latency_s)) for name in policies]
    settings = Settings(concurrency=concurrency, start_latency_s=latency_s)
    return [simulate(loaded, factory, settings, name=name) for name, factory in factories]


def _print_tables(runs: list[Any], log: int) -> None:
    from autoscaler.simulation.report import decision_log, figures

    table = Table(
        "POLICY",
        "REQUESTS",
        "DELAYED",
        "COLD",
        "WAIT P50",
        "WAIT P99",
        "INSTANCE-S",
        "IDLE-S",
        "SCALE EVENTS",
        box=None,
        title=f"trace {runs[0].trace}",
        title_justify="left",
    )
    for run in runs:
        figure = figures(run)
        table.add_row(
            figure.policy,
            str(figure.requests),
            f"{figure.delayed} ({figure.delayed_pct:.2f}%)",
            f"{figure.cold_delayed} ({figure.cold_delayed_pct:.2f}%)",
            f"{figure.wait_p50_ms:g} ms",
            f"{figure.wait_p99_ms:g} ms",
            f"{figure.instance_seconds:.0f}",
            f"{figure.idle_instance_seconds:.0f}",
            str(figure.scale_events),
        )
    out.print(table)
    for run in runs:
        changes = decision_log(run, limit=log)
        decisions = Table(
            "AT",
            "FUNCTION",
            "DESIRED",
            "MODE",
            "REASON",
            box=None,
            title=f"decisions ({run.policy})",
            title_justify="left",
        )
        for change in changes:
            item = asdict(change)
            decisions.add_row(
                f"{item['time']:.2f}s", item["function"], str(item["desired"]), item["mode"], item["reason"]
            )
        out.print(decisions)


def schedules_table(schedules: list[dict[str, Any]], now: float) -> Table:
    """`nest describe`'s scheduled minimums, each with its window now: open until when, or when it next opens."""
    from autoscaler.schedules import next_opening, open_until
    from nest.contracts.model import ScalingSchedule

    table = Table("CRON", "TIMEZONE", "FOR", "MIN", "NOW", box=None, title="scheduled minimums", title_justify="left")
    for item in schedules:
        schedule = ScalingSchedule(item["cron"], item["timezone"], float(item["duration"]), int(item["min"]))
        until = open_until(schedule, now)
        if until is not None:
            state = f"[bold]open[/bold] until {when(until)}"
        else:
            opens = next_opening(schedule, now)
            state = f"closed, opens {when(opens)}" if opens is not None else "closed, never fires again"
        table.add_row(schedule.cron, schedule.timezone, _duration(schedule.duration_s), str(schedule.min), state)
    return table


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
