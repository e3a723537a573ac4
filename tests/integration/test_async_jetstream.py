"""Async invocations through real `nest up`s on the NATS JetStream queue (`--queue nats://HOST:PORT/PREFIX`).

Needs NATS with JetStream at `NEST_NATS_URL` (default nats://127.0.0.1:4222): skipped without it, failing under
`CI`. Each test uses its own prefix and deletes its streams and buckets afterwards.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import start_platform, stop_platform

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.integration

COUNTED = """
import os
from pathlib import Path

RUNS = Path(os.environ["RUNS"])

def handle(request):
    body = request.json()
    RUNS.mkdir(exist_ok=True)
    with (RUNS / body["id"]).open("a") as runs:
        runs.write(os.environ.get("GATEWAY", "?") + "\\n")
    return {"id": body["id"]}
"""


def test_two_gateways_share_one_queue_and_run_each_task_once(tmp_path: Path, jetstream_url: str) -> None:
    runs = tmp_path / "runs"
    gateways = [
        start_platform(tmp_path / f"data{n}", tmp_path / f"work{n}", extra=("--queue", jetstream_url)) for n in range(2)
    ]
    try:
        for n, gateway in enumerate(gateways):
            gateway.deploy("counted", COUNTED, f"env: {{RUNS: {runs}, GATEWAY: g{n}}}\nasync: {{concurrency: 4}}\n")
        first, second = gateways
        with first.http() as http:
            call_ids = [http.post("/async-function/counted", json={"id": f"t{n}"}).json()["call_id"] for n in range(30)]
        for call_id in call_ids:
            done = second.wait_final(call_id)  # the other gateway sees the same tasks
            assert (done["status"], done["attempts"]) == ("succeeded", 1)
        ran = {path.name: path.read_text().split() for path in runs.iterdir()}
        assert sorted(ran) == sorted(f"t{n}" for n in range(30))
        assert all(len(where) == 1 for where in ran.values()), f"a task ran twice: {ran}"
        listed = json.loads(second.cli("tasks", "ls", "--function", "counted", "--json").stdout)
        assert len(listed) == 30
    finally:
        for gateway in gateways:
            assert stop_platform(gateway) == []


def test_accepted_tasks_survive_a_restart_on_jetstream(tmp_path: Path, jetstream_url: str) -> None:
    first = start_platform(tmp_path / "data", tmp_path / "work", extra=("--queue", jetstream_url))
    try:
        first.deploy("later", "def handle(request):\n    return {'ok': True}\n")
        first.cli("async", "pause", "later")
        with first.http() as http:
            call_ids = [http.post("/async-function/later", json={"n": n}).json()["call_id"] for n in range(5)]
    finally:
        assert stop_platform(first) == []
    second = start_platform(tmp_path / "data", tmp_path / "work", extra=("--queue", jetstream_url))
    try:
        second.cli("async", "resume", "later")
        for call_id in call_ids:
            assert second.wait_final(call_id)["status"] == "succeeded"
    finally:
        assert stop_platform(second) == []


def test_nest_up_refuses_a_queue_it_cannot_reach(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="nest up exited"):
        start_platform(tmp_path / "data", tmp_path / "work", extra=("--queue", "nats://127.0.0.1:9"))
    logs = list(tmp_path.glob("nest-up-*.log"))
    assert "no NATS JetStream at nats://127.0.0.1:9" in logs[0].read_text()
