"""Crash points: the real `nest up` is SIGKILLed at each point of an async task's life, then started again.

`NEST_CRASH_AT` (`gateway/asyncq/crashpoints.py`) makes the process kill itself there: before the submission's
commit, after it but before the 202, while the function runs, after its answer but before the attempt is settled,
and while the result's callback is being delivered. After the restart (on the same data directory, with a
one-second lease margin so the dead process's leases run out quickly) every task that got its 202 must reach
`succeeded`, its callback must arrive under one delivery id (a receiver de-duplicating by `webhook-id` sees it
exactly once), and no task may ever run twice at the same time: the function logs each start and end.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.conftest import start_platform, stop_platform

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

LEDGER = """
import json
import os
import time

LOG = os.environ["CRASH_LOG"]


def note(event, key):
    line = json.dumps({"key": key, "event": event, "t": time.time(), "pid": os.getpid()}) + "\\n"
    descriptor = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def handle(request):
    key = request.json()["key"]
    note("start", key)
    time.sleep(0.4)
    note("end", key)
    return {"key": key}
"""
ARGS = ("--lease-margin", "1", "--allow-private-webhooks")
TASKS = 6


class Receiver:
    """Collects the callbacks POSTed to it: (webhook-id, x-call-id, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []
        lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    received.append((self.headers.get("webhook-id", ""), self.headers.get("x-call-id", ""), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_call(self, call_id: str) -> list[tuple[str, str, bytes]]:
        return [entry for entry in list(self.received) if entry[1] == call_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def runs(log: Path, killed_at: float) -> dict[str, list[tuple[float, float]]]:
    """Each key's runs as (start, end); a run the crash cut short ends when the platform died."""
    events: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        events.setdefault(entry["key"], []).append(entry)
    found: dict[str, list[tuple[float, float]]] = {}
    for key, entries in events.items():
        open_runs: dict[int, float] = {}
        for entry in sorted(entries, key=lambda item: item["t"]):
            if entry["event"] == "start":
                open_runs[entry["pid"]] = entry["t"]
            else:
                found.setdefault(key, []).append((open_runs.pop(entry["pid"]), entry["t"]))
        found.setdefault(key, []).extend((started, max(started, killed_at)) for started in open_runs.values())
    return found


def submit_until_refused(platform: Platform, point: str, callback: str) -> tuple[dict[str, str], list[str]]:
    """Submit TASKS tasks one by one; the call ids answered 202 (-> key), and the keys never answered."""
    accepted: dict[str, str] = {}
    unanswered: list[str] = []
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        for n in range(TASKS):
            key = f"{point}-{n}"
            try:
                response = http.post("/async-function/ledger", json={"key": key}, headers={"X-Callback-Url": callback})
            except httpx.HTTPError:
                unanswered.append(key)
                break
            assert response.status_code == 202, response.text
            accepted[response.json()["call_id"]] = key
    return accepted, unanswered


@pytest.fixture(params=["sqlite", "jetstream"])
def queue(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """`nest up`'s queue: the embedded SQLite one, or NATS JetStream (needs NATS, see `jetstream_url`)."""
    if request.param == "sqlite":
        return ()
    return ("--queue", request.getfixturevalue("jetstream_url"))


@pytest.mark.parametrize(
    ("point", "skip", "delay_s"),
    [
        ("before_persist", 3, 0.0),
        ("after_persist", 3, 0.0),
        ("after_dispatch", 1, 0.15),  # killed 150 ms into the second task's run (the function takes 400 ms)
        ("after_result", 1, 0.0),
        ("during_delivery", 1, 0.0),
    ],
)
def test_every_accepted_task_finishes_once_after_a_crash(
    point: str,
    skip: int,
    delay_s: float,
    queue: tuple[str, ...],
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "ledger.log"
    monkeypatch.setenv("NEST_CRASH_AT", point)
    monkeypatch.setenv("NEST_CRASH_SKIP", str(skip))
    monkeypatch.setenv("NEST_CRASH_DELAY_S", str(delay_s))
    first = start_platform(tmp_path / "data", tmp_path / "work", extra=(*ARGS, *queue))
    for name in ("NEST_CRASH_AT", "NEST_CRASH_SKIP", "NEST_CRASH_DELAY_S"):
        monkeypatch.delenv(name)
    try:
        manifest = f"timeout: 2s\nenv: {{CRASH_LOG: {log}}}\nasync: {{concurrency: 2, max_retries: 5}}\n"
        first.deploy("ledger", LEDGER, manifest)
        dispatching = point not in {"before_persist", "after_persist"}
        if dispatching:
            first.cli("async", "pause", "ledger")  # every submission is accepted before the first dispatch
        accepted, unanswered = submit_until_refused(first, point, receiver.url)
        if dispatching:
            first.cli("async", "resume", "ledger", check=False)
        assert first.process.wait(timeout=60) == -signal.SIGKILL, f"nest up did not crash at {point}"
    finally:
        if first.process.poll() is None:
            stop_platform(first)
    killed_at = time.time()
    assert len(accepted) == (skip if not dispatching else TASKS)

    second = start_platform(tmp_path / "data", tmp_path / "work", extra=(*ARGS, *queue))
    try:
        finished = {call_id: second.wait_final(call_id, timeout_s=60) for call_id in accepted}
        assert {view["status"] for view in finished.values()} == {"succeeded"}, finished
        for call_id, key in accepted.items():
            assert json.loads(finished[call_id]["result"]) == {"key": key}
        second.wait_for(
            lambda: all(receiver.for_call(call_id) for call_id in accepted), timeout_s=60, what="every callback"
        )
        if point == "after_persist":  # stored, but the caller never heard: it runs all the same
            second.wait_for(lambda: unanswered[0] in runs(log, killed_at), timeout_s=60, what="the unanswered task")
        time.sleep(1.5)  # let any wrongful second run or redelivery show itself
        with second.http() as http:
            again = {call_id: http.get(f"/api/v1/invocations/{call_id}").json() for call_id in accepted}
    finally:
        assert stop_platform(second) == []

    for call_id, view in again.items():
        assert (view["status"], view["finished_at"]) == ("succeeded", finished[call_id]["finished_at"]), "settled once"
        assert {webhook_id for webhook_id, _, _ in receiver.for_call(call_id)} == {f"{call_id}:callback"}
    ran = runs(log, killed_at)
    assert set(accepted.values()) <= set(ran), "every accepted task ran"
    if point == "before_persist":
        assert unanswered
        assert unanswered[0] not in ran, "a submission killed before its commit was never stored"
    for key, intervals in ran.items():
        ordered = sorted(intervals)
        for earlier, later in itertools.pairwise(ordered):
            assert later[0] >= earlier[1], f"{key} ran twice at once: {ordered}"
