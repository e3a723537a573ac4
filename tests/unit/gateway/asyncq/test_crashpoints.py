"""Crash points: armed by the environment, they SIGKILL the process; unarmed they do nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gateway.asyncq import crashpoints

PROGRAM = """
from gateway.asyncq.crashpoints import crashpoint
crashpoint("after_persist")
print("first", flush=True)
crashpoint("after_result")
print("second", flush=True)
"""


def run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_unarmed_crash_points_do_nothing() -> None:
    crashpoints.crashpoint("after_persist")  # this test process is not armed
    result = run()
    assert (result.returncode, result.stdout.split()) == (0, ["first", "second"])


def test_an_armed_point_kills_the_process_there() -> None:
    result = run(NEST_CRASH_AT="after_result")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["first"]


def test_skips_pass_the_point_that_many_times() -> None:
    result = run(NEST_CRASH_AT="after_persist", NEST_CRASH_SKIP="1")
    assert (result.returncode, result.stdout.split()) == (0, ["first", "second"])


@pytest.mark.parametrize("point", ["nowhere", "after-persist"])
def test_an_unknown_point_is_refused_at_start(point: str) -> None:
    result = run(NEST_CRASH_AT=point)
    assert result.returncode == 1
    assert "is not one of" in result.stderr
