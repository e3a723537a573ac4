"""The one table from Nest errors to HTTP, and the JSON error body every path answers with.

`{"error": "<code>", "reason": "<what is wrong and what to do>", "function": <name|null>,
"invocation_id": <id|null>}`; manifest errors add `"problems": [[field, message], ...]`. DESIGN's "a clear
503/504 with a reason, never a hang" lives here and only here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nest.contracts.errors import (
    BackendError,
    Conflict,
    DeadlineExceeded,
    FunctionInitFailed,
    InvalidInput,
    NestError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
)

if TYPE_CHECKING:
    from starlette.types import Send

STATUS_BY_ERROR: tuple[tuple[type[NestError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (TooManyRequests, 429),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
    (FunctionInitFailed, 502),
    (BackendError, 502),
)
"""Most specific first: `PayloadTooLarge` is an `InvalidInput`."""


class MethodNotAllowed(InvalidInput):
    """The function's `http.methods` does not include the request's method."""

    code = "method_not_allowed"


def status_of(error: NestError) -> int:
    if isinstance(error, MethodNotAllowed):
        return 405
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def retry_after_of(error: NestError) -> str | None:
    """The `Retry-After` value (whole seconds) an error answers with, if any."""
    if isinstance(error, TooManyRequests):
        return str(max(1, round(error.retry_after_s)))
    if isinstance(error, Unavailable):
        return "1"
    return None


def error_body(error: NestError, *, function: str | None = None, invocation_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": error.code,
        "reason": error.message,
        "function": function,
        "invocation_id": invocation_id,
    }
    problems = getattr(error, "problems", None)
    if problems:
        body["problems"] = [list(problem) for problem in problems]
    return body


async def send_error(
    send: Send, error: NestError, *, function: str | None = None, invocation_id: str | None = None
) -> None:
    """Answer a raw ASGI request with the error's status and JSON body (the proxy's path, no Starlette)."""
    payload = json.dumps(error_body(error, function=function, invocation_id=invocation_id)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if invocation_id:
        headers.append((b"x-nest-invocation-id", invocation_id.encode()))
    retry_after = retry_after_of(error)
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status_of(error), "headers": headers})
    await send({"type": "http.response.body", "body": payload})
