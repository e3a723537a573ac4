from __future__ import annotations

import json

import pytest

from gateway.asyncq.delivery.records import (
    MAX_CHAIN_DEPTH,
    Finished,
    Kind,
    condition_of,
    deliveries_for,
    forbidden_address,
)
from nest.contracts.model import AsyncSpec, Destination


def finished(**changes: object) -> Finished:
    values: dict[str, object] = {
        "call_id": "c1",
        "function": "resize",
        "succeeded": True,
        "condition": "Success",
        "attempts": 1,
        "payload": b'{"image": 1}',
        "request": {"method": "POST", "path": "/"},
        "status": 200,
        "response": b'{"ok": true}',
        "error": None,
        "callback_url": None,
        "finished_at": 1000.0,
        "duration_s": 0.25,
    }
    values.update(changes)
    return Finished(**values)  # type: ignore[arg-type]


def test_a_success_goes_to_on_success_as_a_lambda_style_record() -> None:
    spec = AsyncSpec(on_success=Destination(webhook="https://hooks.example/x"), on_failure=Destination(nats="bad"))
    [delivery] = deliveries_for(finished(), spec)
    assert (delivery.kind, delivery.target, delivery.id) == (Kind.WEBHOOK, "https://hooks.example/x", "c1:success")
    record = json.loads(delivery.body)
    assert record["requestContext"] == {
        "requestId": "c1",
        "functionName": "resize",
        "condition": "Success",
        "approximateInvokeCount": 1,
    }
    assert record["requestPayload"] == {"image": 1}
    assert record["responsePayload"] == {"ok": True}
    assert record["responseContext"] == {"statusCode": 200, "functionError": None}


def test_a_failure_goes_to_on_failure_and_a_callback_gets_the_openfaas_headers() -> None:
    spec = AsyncSpec(on_failure=Destination(nats="orders.failed"))
    failed = finished(
        succeeded=False,
        condition="RetriesExhausted",
        status=500,
        response=b"\xff",
        error="boom",
        callback_url="http://cb",
    )
    callback, destination = deliveries_for(failed, spec)
    assert callback.kind is Kind.CALLBACK
    assert callback.headers["x-call-id"] == "c1"
    assert callback.headers["x-function-status"] == "500"
    assert callback.headers["x-duration-seconds"] == "0.250000"
    assert (destination.kind, destination.target) == (Kind.NATS, "orders.failed")
    assert json.loads(destination.body)["responsePayload"] == {"base64": "/w=="}


def test_a_function_destination_chain_is_cut_past_the_depth_limit() -> None:
    spec = AsyncSpec(on_failure=Destination(function="resize"))
    within = deliveries_for(finished(succeeded=False, request={"depth": str(MAX_CHAIN_DEPTH - 1)}), spec)
    beyond = deliveries_for(finished(succeeded=False, request={"depth": str(MAX_CHAIN_DEPTH)}), spec)
    assert (within[0].depth, within[0].refused) == (MAX_CHAIN_DEPTH, None)
    assert beyond[0].refused == f"destination chain deeper than {MAX_CHAIN_DEPTH} refused (a loop?)"


def test_no_destination_and_no_callback_means_nothing_to_deliver() -> None:
    assert deliveries_for(finished(), AsyncSpec()) == []


@pytest.mark.parametrize(
    ("succeeded", "error", "expired", "expected"),
    [
        (True, None, False, "Success"),
        (False, "non-retryable: NonRetryable", False, "NonRetryable"),
        (False, "retries exhausted: 3 attempts", False, "RetriesExhausted"),
        (False, "max_event_age 60s passed", True, "EventAgeExceeded"),
    ],
)
def test_conditions(succeeded: bool, error: str | None, expired: bool, expected: str) -> None:
    assert condition_of(succeeded=succeeded, error=error, expired=expired) == expected


@pytest.mark.parametrize(
    ("address", "allow_private", "refused"),
    [
        ("127.0.0.1", False, "loopback"),
        ("::1", False, "loopback"),
        ("::ffff:127.0.0.1", False, "loopback"),
        ("127.0.0.1", True, None),
        ("169.254.169.254", True, "link-local"),
        ("fe80::1", True, "link-local"),
        ("0.0.0.0", True, "unspecified"),
        ("224.0.0.1", True, "multicast"),
        ("10.1.2.3", False, "private"),
        ("192.168.0.10", False, "private"),
        ("172.16.5.4", False, "private"),
        ("100.64.0.1", False, "private"),
        ("fd00::1", False, "private"),
        ("10.1.2.3", True, None),
        ("93.184.216.34", False, None),
        ("2606:2800:220:1::1", False, None),
    ],
)
def test_the_ssrf_guard(address: str, allow_private: bool, refused: str | None) -> None:
    reason = forbidden_address(address, allow_private=allow_private)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason
