"""Async invocations through a real `nest up`: submit, follow, retries, dead letters, idempotency, pause, cancel."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import start_platform, stop_platform

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

FLAKY = """
import os
from pathlib import Path
from nest import NonRetryable

COUNTS = Path(os.environ["COUNTS"])

def handle(request):
    body = request.json()
    COUNTS.mkdir(exist_ok=True)
    marker = COUNTS / body["id"]
    tries = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(tries))
    if body.get("fatal"):
        raise NonRetryable("bad order")
    if tries < body.get("fail_times", 0) + 1:
        raise RuntimeError(f"try {tries} failed")
    return {"id": body["id"], "tries": tries}
"""


@pytest.fixture(scope="module")
def counts(platform: Platform) -> Path:
    directory = platform.work / "counts"
    platform.deploy(
        "flaky",
        FLAKY,
        f"env: {{COUNTS: {directory}}}\nasync: {{max_retries: 2, concurrency: 4}}\n",
    )
    return directory


def test_an_async_invocation_is_accepted_then_runs_and_keeps_its_result(platform: Platform, counts: Path) -> None:
    with platform.http() as http:
        response = http.post("/async-function/flaky", json={"id": "a1"})
    assert response.status_code == 202
    call_id = response.headers["x-call-id"]
    assert response.json()["call_id"] == call_id
    done = platform.wait_final(call_id)
    assert done["status"] == "succeeded"
    assert json.loads(done["result"]) == {"id": "a1", "tries": 1}
    assert done["attempts"] == 1
    assert done["queued_s"] >= 0
    assert done["running_s"] > 0


def test_a_failing_task_is_retried_and_a_non_retryable_one_is_dead_lettered(platform: Platform, counts: Path) -> None:
    with platform.http() as http:
        retried = http.post("/async-function/flaky", json={"id": "r1", "fail_times": 1}).json()["call_id"]
        fatal = http.post("/async-function/flaky", json={"id": "f1", "fatal": True}).json()["call_id"]
        hopeless = http.post("/async-function/flaky", json={"id": "h1", "fail_times": 9}).json()["call_id"]
    assert platform.wait_final(retried)["attempts"] == 2
    dead = platform.wait_final(fatal)
    assert (dead["status"], dead["attempts"]) == ("dead_lettered", 1)
    assert "NonRetryable" in dead["error"]
    exhausted = platform.wait_final(hopeless, timeout_s=60)
    assert (exhausted["status"], exhausted["attempts"]) == ("dead_lettered", 3)
    listed = platform.cli("dlq", "ls", "--function", "flaky", "--json").stdout
    assert {item["call_id"] for item in json.loads(listed)} >= {fatal, hopeless}
    platform.cli("dlq", "redrive", fatal)
    assert platform.wait_final(fatal)["status"] == "dead_lettered", "the same input fails the same way again"
    assert (counts / "f1").read_text() == "2"


def test_the_same_idempotency_key_runs_once(platform: Platform, counts: Path) -> None:
    headers = {"Idempotency-Key": "order-77"}
    with platform.http() as http:
        first = http.post("/async-function/flaky", json={"id": "i1"}, headers=headers).json()
        platform.wait_final(first["call_id"])
        again = http.post("/async-function/flaky", json={"id": "i1"}, headers=headers)
        other = http.post("/async-function/flaky", json={"id": "i2"}, headers=headers)
    assert again.status_code == 202
    assert again.json()["call_id"] == first["call_id"]
    assert again.json()["created"] is False
    assert json.loads(again.json()["result"])["tries"] == 1
    assert other.status_code == 409
    assert "different payload" in other.json()["reason"]
    assert (counts / "i1").read_text() == "1"


def test_bad_submissions_are_refused_before_anything_is_stored(platform: Platform, counts: Path) -> None:
    with platform.http() as http:
        unknown = http.post("/async-function/nobody", json={})
        too_big = http.post("/async-function/flaky", content=b"x" * (1024 * 1024 + 1))
        bad_delay = http.post("/async-function/flaky", json={}, headers={"X-Nest-Delay": "soon"})
        bad_priority = http.post("/async-function/flaky", json={}, headers={"X-Nest-Priority": "11"})
        bad_callback = http.post("/async-function/flaky", json={}, headers={"X-Callback-Url": "ftp://x"})
        missing = http.get("/api/v1/invocations/nope")
        before = http.get("/api/v1/invocations", params={"function": "nobody"}).json()["invocations"]
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    assert (too_big.status_code, too_big.json()["error"]) == (413, "payload_too_large")
    assert bad_delay.status_code == 400
    assert "X-Nest-Delay" in bad_delay.json()["reason"]
    assert bad_priority.status_code == 400
    assert bad_callback.status_code == 400
    assert missing.status_code == 404
    assert before == []


def test_pause_holds_tasks_cancel_and_clear_remove_them(platform: Platform, counts: Path) -> None:
    platform.cli("async", "pause", "flaky")
    with platform.http() as http:
        held = [http.post("/async-function/flaky", json={"id": f"p{n}"}).json()["call_id"] for n in range(3)]
        delayed = http.post("/async-function/flaky", json={"id": "d1"}, headers={"X-Nest-Delay": "1h"}).json()
        time.sleep(0.5)
        statuses = {http.get(f"/api/v1/invocations/{call}").json()["status"] for call in held}
        assert statuses == {"queued"}
        assert delayed["status"] == "delayed"
        platform.cli("tasks", "cancel", held[0])
        assert http.get(f"/api/v1/invocations/{held[0]}").json()["status"] == "cancelled"
        cancel_again = http.delete(f"/api/v1/invocations/{held[0]}")
        assert cancel_again.status_code == 409
        assert "cancel" in platform.cli("async", "clear", "flaky").stdout
        assert http.get(f"/api/v1/invocations/{delayed['call_id']}").json()["status"] == "cancelled"
        platform.cli("async", "resume", "flaky")
        resumed = http.post("/async-function/flaky", json={"id": "p9"}).json()["call_id"]
    assert platform.wait_final(resumed)["status"] == "succeeded"
    assert not (counts / "p0").exists()


def test_cli_invoke_async_and_tasks_show(platform: Platform, counts: Path) -> None:
    submitted = json.loads(platform.cli("invoke", "flaky", "--async", "--data", '{"id": "c1"}', "--id", "cli-1").stdout)
    done = platform.wait_final(submitted["call_id"])
    assert done["status"] == "succeeded"
    shown = json.loads(platform.cli("tasks", "show", submitted["call_id"], "--json").stdout)
    assert shown["idempotency_key"] == "cli-1"
    assert "succeeded" in platform.cli("tasks", "ls", "--function", "flaky").stdout


def test_accepted_tasks_survive_a_restart(tmp_path: Path) -> None:
    first = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        first.deploy("later", "def handle(request):\n    return {'ok': True}\n")
        first.cli("async", "pause", "later")
        with first.http() as http:
            call_ids = [http.post("/async-function/later", json={"n": n}).json()["call_id"] for n in range(5)]
    finally:
        assert stop_platform(first) == []
    second = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        second.cli("async", "resume", "later")
        for call_id in call_ids:
            assert second.wait_final(call_id)["status"] == "succeeded"
    finally:
        assert stop_platform(second) == []
