"""Running one async task: the request replayed through the gateway's own per-request path, in process.

The dispatcher does not open a socket to the gateway: it calls the `/function/...` ASGI app directly with the
stored request, so an async task gets exactly what a sync request gets (routing, the activator and scale from
zero, balancing, the function's timeout, the same errors) without an HTTP hop. The answer is turned into a
`retry.Failure` when it is one: the runtime names a handler's exception in its JSON body (`type`), the
activator's errors carry a `code`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.asyncq.retry import Failure

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message

    from gateway.asyncq.tasks import Task

PLATFORM_THROTTLES = frozenset({"buffer_full", "unavailable", "draining", "deadline_exceeded"})
"""The task never reached the function (no room at `max` instances, the buffer full, no instance in time, Nest
stopping): back off without spending an attempt, as Lambda does for throttles."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def ok(self) -> bool:
        return self.status < 400

    def failure(self) -> Failure:
        """What went wrong, for `retry.classify_failure`."""
        error_type: str | None = None
        try:
            document: Any = json.loads(self.body) if self.body else None
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            error = document["error"]
            if document.get("type") and error in {"function_error", "bad_return"}:
                error_type = str(document["type"])  # the handler's exception: NonRetryable, Throttled, ...
            else:
                error_type = "no_capacity" if error in PLATFORM_THROTTLES else error
        retry_after = self.header(b"retry-after")
        try:
            retry_after_s = float(retry_after) if retry_after is not None else None
        except ValueError:
            retry_after_s = None
        return Failure(self.status, error_type, retry_after_s)


class ProxyInvoker:
    """Invokes functions through the gateway's `/function/...` ASGI app (`gateway/proxy.py`)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def invoke(self, task: Task, *, call_id: str) -> Answer:
        headers = [(b"x-call-id", call_id.encode())]
        if "content_type" in task.request:
            headers.append((b"content-type", task.request["content_type"].encode()))
        return await self.call(
            task.function,
            method=task.request.get("method", "POST"),
            path=task.request.get("path", "/") or "/",
            query=task.request.get("query", ""),
            body=task.payload,
            headers=headers,
        )

    async def call(
        self,
        function: str,
        *,
        method: str = "POST",
        path: str = "/",
        query: str = "",
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Answer:
        """One request to the function through the gateway's per-request path, answered in full."""
        full_path = f"/function/{function}" + ("" if path == "/" else path if path.startswith("/") else "/" + path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": full_path,
            "raw_path": full_path.encode(),
            "query_string": query.encode(),
            "headers": [*(headers or []), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 0),
            "server": ("nest-gateway", 0),
        }
        delivered = False
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Never answer a disconnect: the caller does not go away; the proxy's timeouts bound the wait.
            await _forever()
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self._app(scope, receive, send)
        return Answer(status, response_headers, b"".join(parts))


async def _forever() -> None:
    await asyncio.Event().wait()
