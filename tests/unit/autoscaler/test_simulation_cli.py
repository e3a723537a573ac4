"""`nest scale simulate` end to end through typer: a table by default, JSON with -o json, clear errors."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from typer.testing import CliRunner

from nest.cli.main import app

if TYPE_CHECKING:
    from pathlib import Path


def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "step.csv"
    rows = [f"{1 + index * 0.05:.2f},1.0" for index in range(100)]
    path.write_text("arrival_s,duration_s\n" + "\n".join(rows) + "\n")
    return path


def test_simulate_prints_a_table_per_policy(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["scale", "simulate", "--trace", str(trace_file(tmp_path)), "--policy", "nest", "--policy", "kpa"]
    )
    assert result.exit_code == 0, result.output
    assert "nest" in result.output
    assert "kpa" in result.output
    assert "decisions (kpa)" in result.output


def test_simulate_prints_json_with_figures_and_decisions(tmp_path: Path) -> None:
    arguments = ["scale", "simulate", "--trace", str(trace_file(tmp_path)), "--policy", "static-2"]
    result = CliRunner().invoke(app, [*arguments, "--concurrency", "2", "--start-latency", "100ms", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["policy"] == "static-2"
    assert report["requests"] == 100
    assert report["settings"] == {"concurrency": 2, "start_latency_s": 0.1, "horizon_s": None}
    assert report["decisions"][0]["reason"].startswith("static")


def test_simulate_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = str(trace_file(tmp_path))
    bad_policy = runner.invoke(app, ["scale", "simulate", "--trace", trace, "--policy", "lambda"])
    assert bad_policy.exit_code == 1
    assert "unknown policy 'lambda'" in bad_policy.output
    bad_latency = runner.invoke(app, ["scale", "simulate", "--trace", trace, "--start-latency", "soon"])
    assert "--start-latency" in bad_latency.output
    missing = runner.invoke(app, ["scale", "simulate", "--trace", str(tmp_path / "none.csv")])
    assert "no such file" in missing.output


def test_simulate_draws_a_synthetic_shape_without_a_file() -> None:
    arguments = ["scale", "simulate", "--shape", "onoff", "--seed", "5", "--policy", "kpa", "-o", "json"]
    result = CliRunner().invoke(app, [*arguments, "--log", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["trace"] == "onoff@5"
    assert report["requests"] > 1000


def test_simulate_wants_exactly_one_trace_source(tmp_path: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(app, ["scale", "simulate"])
    assert neither.exit_code == 1
    assert "give either --trace FILE or --shape NAME" in neither.output
    both = runner.invoke(app, ["scale", "simulate", "--trace", str(trace_file(tmp_path)), "--shape", "ramp"])
    assert both.exit_code == 1
    unknown = runner.invoke(app, ["scale", "simulate", "--shape", "tsunami"])
    assert unknown.exit_code == 1
    assert "no shape 'tsunami'; choose one of steady" in unknown.output
    seeded_file = runner.invoke(app, ["scale", "simulate", "--trace", str(trace_file(tmp_path)), "--seed", "3"])
    assert seeded_file.exit_code == 1
    assert "--seed draws a --shape" in seeded_file.output
