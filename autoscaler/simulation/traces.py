"""Request traces: what arrives when, for how long, for which function. CSV or JSONL, validated line by line.

```
arrival_s,duration_s,function        # CSV: a header, then one request a line; `function` is optional
0.00,0.250,thumbnail
0.12,1.5,thumbnail
```
```
{"arrival_s": 0.0, "duration_s": 0.25, "function": "thumbnail"}   # JSONL: one object a line
```

Times are seconds from the start of the trace. Each error names the file, the line and the fix. The only I/O of
the simulator lives here; `model.py` takes the parsed `Trace`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nest.contracts.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

MAX_REQUESTS = 2_000_000
"""A trace larger than this is refused: 2 M requests replay in about a minute per policy on a laptop."""
MAX_FILE_BYTES = 256 * 1024**2
MAX_FUNCTIONS = 10_000
MAX_NAME_CHARS = 128
MAX_TIME_S = 30 * 86_400.0
"""Arrivals and durations beyond 30 days are almost surely in milliseconds or epoch seconds, not trace seconds."""
DEFAULT_FUNCTION = "default"
COLUMNS = ("arrival_s", "duration_s", "function")


class TraceError(InvalidInput):
    """A trace file that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Request:
    arrival_s: float
    duration_s: float
    function: str = DEFAULT_FUNCTION


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests sorted by arrival; `functions` in order of first appearance."""

    requests: tuple[Request, ...]
    name: str = "trace"

    @property
    def functions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(request.function for request in self.requests))

    @property
    def end_s(self) -> float:
        """When the last request finishes: the horizon every policy is measured to."""
        return max((request.arrival_s + request.duration_s for request in self.requests), default=0.0)


def step_load(before: int, after: int, *, at_s: float, for_s: float, request_s: float) -> Trace:
    """Closed-loop clients as a trace: `before` back-to-back callers until `at_s`, `after` for `for_s`, then none.

    Each caller sends a request of `request_s` as soon as its previous one would end (a wait for a cold start
    shifts nothing here: the trace is open-loop). E.g. `step_load(1, 20, at_s=5, for_s=10, request_s=0.5)` is the
    live integration test's "1 -> 20 concurrent for 10 s".
    """
    requests: list[Request] = []
    for callers, start, end in ((before, 0.0, at_s), (after, at_s, at_s + for_s)):
        for _ in range(callers):
            now = start
            while now + 1e-9 < end:
                requests.append(Request(round(now, 6), request_s))
                now += request_s
    requests.sort(key=lambda request: request.arrival_s)
    return Trace(tuple(requests), name=f"step-{before}-{after}")


def load_trace(path: Path) -> Trace:
    """Read a `.csv` or `.jsonl` trace. E.g. `load_trace(Path("tests/bench/traces/spike.csv"))`."""
    if not path.is_file():
        raise TraceError(str(path), "no such file (give a .csv or .jsonl trace, see docs/autoscaling.md)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TraceError(str(path), f"{size} bytes is over the limit of {MAX_FILE_BYTES}; split the trace")
    text = path.read_text(encoding="utf-8", errors="strict")
    if path.suffix == ".jsonl":
        return parse_jsonl(text, source=str(path), name=path.stem)
    if path.suffix == ".csv":
        return parse_csv(text, source=str(path), name=path.stem)
    raise TraceError(str(path), f"unknown trace format {path.suffix!r} (expected .csv or .jsonl)")


def parse_csv(text: str, *, source: str = "trace", name: str = "trace") -> Trace:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise TraceError(source, "empty file (expected a header `arrival_s,duration_s[,function]`)")
    columns = [column.strip() for column in header]
    if columns not in (list(COLUMNS[:2]), list(COLUMNS)):
        raise TraceError(f"{source}:1", f"header {','.join(columns)!r} must be `arrival_s,duration_s[,function]`")

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        for number, row in enumerate(rows, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(columns):
                raise TraceError(
                    f"{source}:{number}", f"{len(row)} fields, expected {len(columns)} ({','.join(columns)})"
                )
            yield number, dict(zip(columns, row, strict=True))

    return _build(records(), source=source, name=name)


def parse_jsonl(text: str, *, source: str = "trace", name: str = "trace") -> Trace:
    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{source}:{number}", f"not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise TraceError(f"{source}:{number}", 'expected an object like {"arrival_s": 0.5, "duration_s": 0.1}')
            unknown = set(record) - set(COLUMNS)
            if unknown:
                raise TraceError(f"{source}:{number}", f"unknown field(s) {sorted(unknown)} (allowed: {list(COLUMNS)})")
            yield number, record

    return _build(records(), source=source, name=name)


def _build(records: Iterable[tuple[int, dict[str, Any]]], *, source: str, name: str) -> Trace:
    requests: list[Request] = []
    functions: set[str] = set()
    for number, record in records:
        where = f"{source}:{number}"
        if len(requests) >= MAX_REQUESTS:
            raise TraceError(where, f"more than {MAX_REQUESTS} requests; split the trace")
        function = _function(record.get("function"), where)
        functions.add(function)
        if len(functions) > MAX_FUNCTIONS:
            raise TraceError(where, f"more than {MAX_FUNCTIONS} distinct functions")
        arrival = _seconds(record, "arrival_s", where)
        duration = _seconds(record, "duration_s", where)
        requests.append(Request(arrival, duration, function))
    if not requests:
        raise TraceError(source, "no requests in the trace")
    requests.sort(key=lambda request: request.arrival_s)
    return Trace(tuple(requests), name=name)


def _seconds(record: dict[str, Any], field: str, where: str) -> float:
    if field not in record or record[field] in ("", None):
        raise TraceError(f"{where}: {field}", "missing (seconds, e.g. 0.25)")
    raw = record[field]
    if isinstance(raw, bool):
        raise TraceError(f"{where}: {field}", f"{raw!r} is not a number of seconds")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise TraceError(f"{where}: {field}", f"{raw!r} is not a number of seconds (e.g. 0.25)") from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: {field}", f"{raw!r} must be a finite number of seconds ≥ 0")
    if value > MAX_TIME_S:
        raise TraceError(f"{where}: {field}", f"{value:g}s is over 30 days: are these milliseconds or epoch times?")
    return value


def _function(raw: Any, where: str) -> str:
    if raw is None or raw == "":
        return DEFAULT_FUNCTION
    if not isinstance(raw, str):
        raise TraceError(f"{where}: function", f"{raw!r} is not a name")
    if len(raw) > MAX_NAME_CHARS:
        raise TraceError(f"{where}: function", f"name longer than {MAX_NAME_CHARS} characters")
    return raw.strip()
