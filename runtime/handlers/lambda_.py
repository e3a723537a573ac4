"""The lambda style: `handler(event, context)` with an API Gateway HTTP API (payload 2.0) event, as AWS Lambda
calls it behind an HTTP API, and the result mapped back the way API Gateway does.

A dict with `statusCode` is a full response (`headers`, `body`, `isBase64Encoded`); any other value is a 200 JSON
body, as API Gateway infers for payload 2.0.

A request carrying `x-nest-lambda-direct` comes from the Lambda Invoke API (`POST /2015-03-31/functions/NAME/
invocations`): the body *is* the event (JSON), and the result goes back as JSON unchanged, as Lambda's Invoke does.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.handlers.native import JSON, TEXT


@dataclass
class LambdaContext:
    """The attributes Lambda's Python context offers that make sense here."""

    function_name: str
    function_version: str
    aws_request_id: str
    memory_limit_in_mb: int
    deadline: float
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""
    client_context: Any = None
    identity: Any = None
    _: dict[str, Any] = field(default_factory=dict)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


DIRECT_HEADER = b"x-nest-lambda-direct"


def direct_event(body: bytes) -> Any:
    """The Invoke API's event: the payload's JSON (None for an empty payload)."""
    return json.loads(body) if body.strip() else None


def direct_response(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return 200, [JSON], json.dumps(result, separators=(",", ":"), default=str).encode()


def build_event(scope: dict[str, Any], body: bytes, *, invocation_id: str) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        headers[name] = f"{headers[name]},{text}" if name in headers else text
    raw_query = scope["query_string"].decode("latin-1")
    parameters: dict[str, str] = {}
    for pair in filter(None, raw_query.split("&")):
        key, _, value = pair.partition("=")
        parameters[key] = f"{parameters[key]},{value}" if key in parameters else value
    try:
        text_body, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text_body, encoded = base64.b64encode(body).decode(), True
    client = scope.get("client") or ("", 0)
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": scope["path"],
        "rawQueryString": raw_query,
        "cookies": [c.strip() for c in headers.get("cookie", "").split(";") if c.strip()],
        "headers": headers,
        "queryStringParameters": parameters or None,
        "requestContext": {
            "http": {
                "method": scope["method"],
                "path": scope["path"],
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "sourceIp": headers.get("x-forwarded-for", client[0]),
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": invocation_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": text_body if body else None,
        "isBase64Encoded": encoded,
    }


def to_response(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    if isinstance(result, dict) and "statusCode" in result:
        headers = [(str(k).lower().encode(), str(v).encode()) for k, v in (result.get("headers") or {}).items()]
        body = result.get("body") or ""
        if result.get("isBase64Encoded"):
            data = base64.b64decode(body)
        else:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            if not any(name == b"content-type" for name, _ in headers):
                headers.append(JSON if data[:1] in {b"{", b"["} else TEXT)
        return int(result["statusCode"]), headers, data
    if result is None:
        return 200, [], b""
    return 200, [JSON], json.dumps(result, separators=(",", ":"), default=str).encode()
