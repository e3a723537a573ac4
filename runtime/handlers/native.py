"""The native style: `handle(request: nest.Request)`, sync or async, returning a value mapped to a response.

dict/list -> 200 JSON; str -> text/plain; bytes -> application/octet-stream; None -> 204; `nest.Response` ->
as given. Anything else is a `BadReturn`, reported to the caller as a 500 that names the allowed types.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from nest.sdk import Headers, Request, Response

JSON = (b"content-type", b"application/json")
TEXT = (b"content-type", b"text/plain; charset=utf-8")
BINARY = (b"content-type", b"application/octet-stream")

RawHeaders = list[tuple[bytes, bytes]]


class BadReturn(TypeError):
    """The handler returned something Nest cannot turn into a response."""


def build_request(scope: dict[str, Any], body: bytes, *, invocation_id: str, function: str) -> Request:
    query_list = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=dict(query_list),
        headers=Headers(scope["headers"]),
        body=body,
        invocation_id=invocation_id,
        function=function,
        query_list=query_list,
    )


def _encode(body: Any, headers: RawHeaders) -> bytes:
    has_type = any(name == b"content-type" for name, _ in headers)
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        if not has_type:
            headers.append(BINARY)
        return bytes(body)
    if isinstance(body, str):
        if not has_type:
            headers.append(TEXT)
        return body.encode()
    if isinstance(body, dict | list):
        if not has_type:
            headers.append(JSON)
        return json.dumps(body, separators=(",", ":"), default=str).encode()
    raise BadReturn(f"handler returned {type(body).__name__}; return dict, list, str, bytes, None or nest.Response")


def to_response(result: Any) -> tuple[int, RawHeaders, bytes]:
    """Map a handler's return value to (status, headers, body)."""
    if isinstance(result, Response):
        headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in result.headers.items()]
        return result.status, headers, _encode(result.body, headers)
    if result is None:
        return 204, [], b""
    headers = []
    return 200, headers, _encode(result, headers)
