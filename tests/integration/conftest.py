"""A real `nest up` in a child process (real SQLite, real instance processes), driven through its CLI and HTTP.

Each test module gets one platform on a free port with its own data directory; `deploy()` writes a function
directory and runs `nest deploy` on it, as a user would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.asyncq.jetstream.queue import JetStreamTaskQueue
from tests.unit.gateway.asyncq.test_queue_contract import NATS_URL, nats_reachable

if TYPE_CHECKING:
    from collections.abc import Iterator

NEST = str(Path(sys.executable).parent / "nest")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), to prove shutdown leaves nothing running."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


FINAL_STATUSES = frozenset({"succeeded", "dead_lettered", "expired", "cancelled", "failed"})
"""An async invocation's statuses that do not change again."""


@dataclass
class Platform:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    work: Path

    def cli(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [NEST, *args],
            env={**os.environ, "NEST_URL": self.url},
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin.decode() if stdin is not None else None,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"nest {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def write_function(self, name: str, code: str, manifest: str = "", *, files: dict[str, str] | None = None) -> Path:
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "nest.yaml").write_text(f"name: {name}\n" + textwrap.dedent(manifest))
        (directory / "main.py").write_text(textwrap.dedent(code))
        for relative, content in (files or {}).items():
            (directory / relative).write_text(textwrap.dedent(content))
        return directory

    def deploy(self, name: str, code: str, manifest: str = "", **kwargs: dict[str, str]) -> str:
        """Write and deploy a function; returns the CLI's output."""
        directory = self.write_function(name, code, manifest, **kwargs)
        return self.cli("deploy", str(directory)).stdout

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def describe(self, name: str) -> dict[str, object]:
        with self.http() as http:
            response = http.get(f"/api/v1/functions/{name}")
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def wait_final(self, call_id: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
        """An async invocation's record once it has reached a final status."""
        found: dict[str, Any] = {}

        def final() -> bool:
            with self.http() as http:
                found.update(http.get(f"/api/v1/invocations/{call_id}").json())
            return found.get("status") in FINAL_STATUSES

        self.wait_for(final, timeout_s=timeout_s, what=f"invocation {call_id} to finish")
        return found

    def wait_for(self, predicate: object, *, timeout_s: float = 20.0, what: str = "condition") -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def start_platform(data_dir: Path, work: Path, *, port: int | None = None, extra: tuple[str, ...] = ()) -> Platform:
    port = port or free_port()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / f"nest-up-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [NEST, "up", "--port", str(port), "--data-dir", str(data_dir), "--health-interval", "0.5", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NEST_LEAK_CHECK": "the platform's environment must not reach functions"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nest up exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Platform(url, data_dir, process, work)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"nest up did not become ready within 30s; see {log.name}")


def stop_platform(platform: Platform) -> list[int]:
    """Ctrl-C, wait, and return any process it left behind (must be none)."""
    pid = platform.process.pid
    platform.process.send_signal(signal.SIGINT)
    try:
        platform.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        platform.process.kill()
        raise
    return children_of(pid)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("nest")
    running = start_platform(root / "data", root / "work")
    yield running
    if running.process.poll() is None:
        stop_platform(running)


@pytest.fixture
def jetstream_url() -> Iterator[str]:
    """`--queue` for a NATS JetStream queue of its own (a fresh prefix, its streams and buckets deleted after)."""
    problem = asyncio.run(nats_reachable())
    if problem is not None:
        reason = f"no NATS JetStream at {NATS_URL} (set NEST_NATS_URL): {problem}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    prefix = f"IT{uuid.uuid4().hex[:10]}"
    yield f"{NATS_URL}/{prefix}"
    asyncio.run(_destroy(prefix))


async def _destroy(prefix: str) -> None:
    queue = JetStreamTaskQueue(NATS_URL, prefix=prefix)
    await queue.open()
    await queue.destroy()
    await queue.close()
