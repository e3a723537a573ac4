"""What a finished async task must deliver, and where it may go. Pure: no I/O, no clock.

The destination record follows AWS Lambda's, which users of destinations know:

```json
{"version": "1.0", "timestamp": 1795431950.4,
 "requestContext": {"requestId": "<call id>", "functionName": "resize", "condition": "Success",
                    "approximateInvokeCount": 1},
 "requestPayload": {...}, "responseContext": {"statusCode": 200, "functionError": null},
 "responsePayload": {...}}
```

Conditions: `Success`, `RetriesExhausted`, `NonRetryable`, `EventAgeExceeded`. Payloads that are JSON are
embedded as JSON, other bytes as `{"base64": ...}`. A destination that is another function carries the chain
depth along; past `MAX_CHAIN_DEPTH` the hop is refused (recorded as a failed delivery, not dropped silently) so
that a function whose failure destination is itself cannot loop forever.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nest.contracts.model import AsyncSpec, Destination

MAX_CHAIN_DEPTH = 3
DEPTH_KEY = "depth"
"""Where a task submitted by a destination keeps its chain depth (in the task's `request` description)."""


class Kind(StrEnum):
    CALLBACK = "callback"
    FUNCTION = "function"
    WEBHOOK = "webhook"
    NATS = "nats"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record to send to one target. `id` is stable for the task, target and attempt outcome."""

    id: str
    call_id: str
    kind: Kind
    target: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    depth: int = 0
    refused: str | None = None
    """Why this delivery must not be attempted (chain too deep); kept as a failed delivery."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The parts of a settled task the records are made of (kept free of the queue's types)."""

    call_id: str
    function: str
    succeeded: bool
    condition: str
    attempts: int
    payload: bytes
    request: dict[str, str]
    status: int | None
    response: bytes | None
    error: str | None
    callback_url: str | None
    finished_at: float
    duration_s: float


def condition_of(*, succeeded: bool, error: str | None, expired: bool) -> str:
    if succeeded:
        return "Success"
    if expired:
        return "EventAgeExceeded"
    if error and error.startswith("non-retryable"):
        return "NonRetryable"
    return "RetriesExhausted"


def deliveries_for(finished: Finished, spec: AsyncSpec) -> list[Delivery]:
    """Every delivery a finished task owes: its callback, then its success or failure destination."""
    found: list[Delivery] = []
    if finished.callback_url:
        headers = {
            "content-type": "application/json",
            "x-call-id": finished.call_id,
            "x-function-name": finished.function,
            "x-function-status": str(finished.status if finished.status is not None else 500),
            "x-duration-seconds": f"{finished.duration_s:.6f}",
        }
        body = finished.response if finished.response is not None else (finished.error or "").encode()
        found.append(
            Delivery(
                f"{finished.call_id}:callback", finished.call_id, Kind.CALLBACK, finished.callback_url, body, headers
            )
        )
    destination = spec.on_success if finished.succeeded else spec.on_failure
    if destination is not None:
        found.append(_to_destination(finished, destination))
    return found


def _to_destination(finished: Finished, destination: Destination) -> Delivery:
    body = json.dumps(record(finished), separators=(",", ":")).encode()
    depth = int(finished.request.get(DEPTH_KEY, "0")) + 1
    delivery_id = f"{finished.call_id}:{'success' if finished.succeeded else 'failure'}"
    if destination.function:
        refused = None
        if depth > MAX_CHAIN_DEPTH:
            refused = f"destination chain deeper than {MAX_CHAIN_DEPTH} refused (a loop?)"
        return Delivery(
            delivery_id, finished.call_id, Kind.FUNCTION, destination.function, body, depth=depth, refused=refused
        )
    if destination.webhook:
        return Delivery(delivery_id, finished.call_id, Kind.WEBHOOK, destination.webhook, body)
    return Delivery(delivery_id, finished.call_id, Kind.NATS, destination.nats or "", body)


def record(finished: Finished) -> dict[str, Any]:
    return {
        "version": "1.0",
        "timestamp": finished.finished_at,
        "requestContext": {
            "requestId": finished.call_id,
            "functionName": finished.function,
            "condition": finished.condition,
            "approximateInvokeCount": finished.attempts,
        },
        "requestPayload": _embed(finished.payload),
        "responseContext": {
            "statusCode": finished.status,
            "functionError": None if finished.succeeded else (finished.error or "error"),
        },
        "responsePayload": _embed(finished.response) if finished.response is not None else None,
    }


def _embed(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(data).decode()}


def forbidden_address(address: str, *, allow_private: bool) -> str | None:
    """Why an outgoing webhook may not connect to `address` (an IP), or None. The SSRF guard's rule.

    Loopback, link-local (cloud metadata at 169.254.169.254), unspecified, multicast and reserved addresses are
    always refused; private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10) unless the operator
    allows them. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{ip} is a loopback address" if not allow_private else None
    for check, what in (
        (ip.is_link_local, "link-local"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
    ):
        if check:
            return f"{ip} is a {what} address"
    if not allow_private and (ip.is_private or ip in ipaddress.ip_network("100.64.0.0/10")):
        return f"{ip} is a private address (allow with nest up --allow-private-webhooks)"
    return None
