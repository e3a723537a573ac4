"""Write the autoscaler trace suite to tests/bench/traces/ (seeded: the same files on every run).

The shapes live in autoscaler/simulation/shapes.py and are documented in docs/autoscaling.md ("The trace
suite"). Every trace is a CSV of `arrival_s,duration_s[,function]` with millisecond precision.

Run: .venv/bin/python scripts/make_traces.py [--out tests/bench/traces]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoscaler.simulation.shapes import SHAPES, rows_of, suite_seed, to_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/bench/traces")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SHAPES:
        rows = rows_of(name, suite_seed(name))
        path = args.out / f"{name}.csv"
        path.write_text(to_csv(rows))
        print(f"{path}: {len(rows)} requests, {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
