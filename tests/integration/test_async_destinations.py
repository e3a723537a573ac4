"""Async results delivered through a real `nest up`: callbacks, signed webhooks, function and NATS destinations."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.integration.conftest import free_port, start_platform, stop_platform

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

NATS_URL = os.environ.get("NEST_NATS_URL", "nats://127.0.0.1:4222")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A local HTTP endpoint that keeps what it is sent; answers 500 to the first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                else:
                    receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.got.set()
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            while len(self.received) < count and not deadline.is_set():
                self.got.wait(0.05)
                self.got.clear()
        finally:
            timer.cancel()
        assert len(self.received) >= count, f"received {len(self.received)} of {count}"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver(fail_first=1)
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture(scope="module")
def open_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("nest-destinations")
    extra = ("--allow-private-webhooks", "--webhook-secret", SECRET, "--nats-url", NATS_URL)
    running = start_platform(root / "data", root / "work", extra=extra)
    yield running
    stop_platform(running)


def test_a_webhook_destination_gets_a_signed_record_retried_past_a_failure(
    open_platform: Platform, receiver: Receiver
) -> None:
    manifest = f"async: {{on_success: {{webhook: '{receiver.url}/done'}}}}\n"
    open_platform.deploy("greeter", "def handle(request):\n    return {'hi': request.json()['name']}\n", manifest)
    with open_platform.http() as http:
        call_id = http.post("/async-function/greeter", json={"name": "ada"}).json()["call_id"]
    receiver.wait(1)
    path, headers, body = receiver.received[0]
    assert path == "/done"
    Webhook(SECRET).verify(body, headers)  # raises if the signature is wrong
    record = json.loads(body)
    assert record["requestContext"]["requestId"] == call_id
    assert record["requestContext"]["condition"] == "Success"
    assert record["responsePayload"] == {"hi": "ada"}
    with open_platform.http() as http:
        deliveries = http.get(f"/api/v1/invocations/{call_id}").json()["deliveries"]
    assert deliveries[0]["status"] == "delivered"
    assert deliveries[0]["attempts"] == 2, "the first attempt got a 500 and was retried"


def test_a_callback_url_gets_the_result_with_openfaas_headers(open_platform: Platform, receiver: Receiver) -> None:
    open_platform.deploy("echo", "def handle(request):\n    return request.body\n")
    before = len(receiver.received)
    with open_platform.http() as http:
        response = http.post("/async-function/echo", content=b"ping", headers={"X-Callback-Url": f"{receiver.url}/cb"})
    receiver.wait(before + 1)
    path, headers, body = receiver.received[before]
    assert (path, body) == ("/cb", b"ping")
    assert headers["x-call-id"] == response.json()["call_id"]
    assert headers["x-function-status"] == "200"
    assert float(headers["x-duration-seconds"]) > 0


def test_a_failure_destination_function_gets_the_record_and_loops_are_cut(open_platform: Platform) -> None:
    open_platform.deploy(
        "looper",
        "from nest import NonRetryable\ndef handle(request):\n    raise NonRetryable('always')\n",
        "async: {on_failure: {function: looper}}\n",
    )
    with open_platform.http() as http:
        first = http.post("/async-function/looper", json={"start": True}).json()["call_id"]

        def chain() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = http.get("/api/v1/invocations", params={"function": "looper"}).json()[
                "invocations"
            ]
            return items

        open_platform.wait_for(lambda: len(chain()) == 4, what="the first task and three destination hops")
        last = chain()[0]["call_id"]
        open_platform.wait_for(
            lambda: http.get(f"/api/v1/invocations/{last}").json()["deliveries"][:1] != [], what="the refused hop"
        )
        refused = http.get(f"/api/v1/invocations/{last}").json()["deliveries"][0]
        hop = http.get(f"/api/v1/invocations/{chain()[-2]['call_id']}").json()
        oldest = chain()[-1]["call_id"]
    assert refused["status"] == "failed"
    assert "deeper than 3" in refused["error"]
    assert oldest == first
    assert hop["status"] == "dead_lettered"


def test_a_nats_destination_publishes_the_record(open_platform: Platform) -> None:
    nats = pytest.importorskip("nats")

    async def scenario() -> dict[str, Any]:
        try:
            connection = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
        except Exception as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"NATS is not reachable at {NATS_URL} ({exc}); set NEST_NATS_URL")
        subscription = await connection.subscribe("nest.test.results")
        open_platform.deploy(
            "natty", "def handle(request):\n    return {'n': 1}\n", "async: {on_success: {nats: nest.test.results}}\n"
        )
        with open_platform.http() as http:
            http.post("/async-function/natty", json={})
        message = await subscription.next_msg(timeout=30)
        await connection.close()
        result: dict[str, Any] = json.loads(message.data)
        return result

    record = asyncio.run(scenario())
    assert record["requestContext"]["functionName"] == "natty"
    assert record["responsePayload"] == {"n": 1}


def test_webhooks_to_private_addresses_are_refused_by_default(tmp_path: Path, receiver: Receiver) -> None:
    platform = start_platform(tmp_path / "data", tmp_path / "work")
    try:
        manifest = f"async: {{on_success: {{webhook: '{receiver.url}/never'}}}}\n"
        platform.deploy("guarded", "def handle(request):\n    return 'x'\n", manifest)
        with platform.http() as http:
            call_id = http.post("/async-function/guarded", json={}).json()["call_id"]

            def delivery() -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = http.get(f"/api/v1/invocations/{call_id}").json().get("deliveries", [])
                return items

            platform.wait_for(lambda: delivery()[:1] and delivery()[0]["status"] == "failed", what="the refusal")
            assert "loopback" in delivery()[0]["error"]
        assert (tmp_path / "data" / "webhook-secret").stat().st_mode & 0o777 == 0o600
    finally:
        stop_platform(platform)
