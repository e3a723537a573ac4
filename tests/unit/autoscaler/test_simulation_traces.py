"""Trace files: both formats load, and every bad input is refused with the file, the line and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from autoscaler.simulation.policies import make_policy
from autoscaler.simulation.traces import TraceError, load_trace
from nest.contracts.errors import InvalidInput

if TYPE_CHECKING:
    from pathlib import Path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_and_jsonl_give_the_same_trace_sorted_by_arrival(tmp_path: Path) -> None:
    csv = write(tmp_path, "t.csv", "arrival_s,duration_s,function\n1.5,0.2,b\n0.5,0.1,a\n")
    jsonl = write(
        tmp_path,
        "t.jsonl",
        '{"arrival_s": 1.5, "duration_s": 0.2, "function": "b"}\n\n'
        '{"arrival_s": 0.5, "duration_s": 0.1, "function": "a"}\n',
    )
    assert load_trace(csv).requests == load_trace(jsonl).requests
    trace = load_trace(csv)
    assert [request.function for request in trace.requests] == ["a", "b"]
    assert trace.end_s == pytest.approx(1.7)


def test_the_function_column_is_optional(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, "t.csv", "arrival_s,duration_s\n0,1\n"))
    assert trace.functions == ("default",)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param("t.csv", "", "empty file", id="empty"),
        pytest.param("t.csv", "time,length\n0,1\n", "t.csv:1: header 'time,length'", id="bad-header"),
        pytest.param("t.csv", "arrival_s,duration_s\n0,1\n2\n", "t.csv:3: 1 fields, expected 2", id="short-row"),
        pytest.param("t.csv", "arrival_s,duration_s\n0,abc\n", "t.csv:2: duration_s: 'abc' is not a number", id="nan"),
        pytest.param("t.csv", "arrival_s,duration_s\n-1,1\n", "t.csv:2: arrival_s: '-1' must be", id="negative"),
        pytest.param("t.csv", "arrival_s,duration_s\ninf,1\n", "must be a finite number", id="infinite"),
        pytest.param("t.csv", "arrival_s,duration_s\n1700000000,1\n", "epoch times?", id="epoch"),
        pytest.param("t.csv", "arrival_s,duration_s\n", "no requests", id="no-rows"),
        pytest.param("t.jsonl", "{nope\n", "t.jsonl:1: not JSON", id="not-json"),
        pytest.param("t.jsonl", "[1, 2]\n", "t.jsonl:1: expected an object", id="not-object"),
        pytest.param("t.jsonl", '{"arrival_s": 0}\n', "t.jsonl:1: duration_s: missing", id="missing"),
        pytest.param("t.jsonl", '{"arrival_s": 0, "duration_s": 1, "x": 2}\n', "unknown field(s) ['x']", id="extra"),
        pytest.param("t.jsonl", '{"arrival_s": true, "duration_s": 1}\n', "True is not a number", id="bool"),
        pytest.param("t.jsonl", '{"arrival_s": 0, "duration_s": 1, "function": 3}\n', "3 is not a name", id="name"),
        pytest.param("t.txt", "0,1\n", "unknown trace format '.txt'", id="suffix"),
    ],
)
def test_bad_traces_are_refused_naming_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(TraceError) as caught:
        load_trace(write(tmp_path, name, text))
    assert message in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "absent.csv")


@pytest.mark.parametrize("name", ["lambda", "keepalive-", "static-x", "keepalive-10y"])
def test_unknown_policies_are_refused_with_the_choices(name: str) -> None:
    with pytest.raises(InvalidInput, match="expected nest, kpa, keepalive-"):
        make_policy(name, concurrency=1, start_latency_s=0.0)
