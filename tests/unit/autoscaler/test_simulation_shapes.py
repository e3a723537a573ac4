"""The synthetic shapes: the suite's files are exactly their suite-seeded draws; other seeds differ; pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.simulation.shapes import SHAPES, generate, rows_of, suite_seed, to_csv
from autoscaler.simulation.traces import TraceError, load_trace

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_suite_files_are_the_suite_seeded_draws(name: str) -> None:
    assert (TRACES / f"{name}.csv").read_text() == to_csv(rows_of(name, suite_seed(name)))
    assert generate(name).requests == load_trace(TRACES / f"{name}.csv").requests


def test_another_seed_is_another_draw_of_the_same_shape() -> None:
    suite, other = generate("steady"), generate("steady", seed=7)
    assert other.name == "steady@7"
    assert other.requests != suite.requests
    assert generate("steady", seed=7).requests == other.requests  # seeded: the same draw every time
    rates = [len(trace.requests) / 600.0 for trace in (suite, other)]
    assert all(18.0 < rate < 22.0 for rate in rates)  # 20 requests/s, both


def test_an_unknown_shape_names_the_known_ones() -> None:
    with pytest.raises(TraceError, match="no shape 'tsunami'; choose one of steady, diurnal"):
        generate("tsunami")
