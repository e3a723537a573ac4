"""The zygote's argument parsing (it skips argparse) and its reset of signal handlers."""

from __future__ import annotations

import signal

import pytest

from runtime.config import parse_args
from runtime.zygote import PYTHON_SIGNALS, runtime_config

BACKEND_ARGV = [
    *("--socket", "/run/s.sock", "--code-dir", "/code", "--handler", "app:main", "--style", "asgi"),
    *("--function", "hello", "--version", "abc", "--instance", "hello-1", "--timeout", "2.5"),
    *("--concurrency", "4", "--memory-bytes", "134217728", "--status-fd", "7"),
]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="plain"),
        pytest.param(["--debug"], id="debug"),
        pytest.param(["--no-memory-rlimit"], id="cgroup"),
        pytest.param(["--debug", "--no-memory-rlimit", "--tcp-port", "9000"], id="all"),
    ],
)
def test_the_fast_parse_agrees_with_argparse_on_what_the_backend_sends(extra: list[str]) -> None:
    argv = BACKEND_ARGV + extra
    assert runtime_config(argv) == parse_args(argv)


def test_defaults_match_argparse() -> None:
    argv = ["--socket", "s", "--code-dir", "c", "--function", "f", "--version", "v", "--instance", "i"]
    assert runtime_config(argv) == parse_args(argv)


def test_anything_unexpected_falls_back_to_argparse_and_its_errors() -> None:
    with pytest.raises(SystemExit):
        runtime_config([*BACKEND_ARGV, "--bogus", "1"])
    with pytest.raises(SystemExit):
        runtime_config([*BACKEND_ARGV[:-2], "--status-fd", "seven"])


def test_a_forked_instance_gets_the_handlers_a_fresh_interpreter_has() -> None:
    assert PYTHON_SIGNALS[signal.SIGPIPE] == signal.SIG_IGN  # EPIPE is an exception, not a silent death
    assert PYTHON_SIGNALS[signal.SIGINT] is signal.default_int_handler
