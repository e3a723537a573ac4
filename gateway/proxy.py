"""The per-request path: `/function/{name}[/{path}]` (and manifests' extra paths) to an instance and back.

Plain ASGI, not a Starlette endpoint, because every microsecond here is paid by every invocation: resolve the
route (dict lookups), read the body under its limit (413 before reading it all), take a slot from the version's
gate (`gateway/activator.py`: at once, or after waiting in the buffer while an instance starts), write the
request to the instance over a pooled Unix-socket connection (`gateway/upstream.py`), stream the response back,
give the slot back. A client that goes away cancels its request, which frees the slot and the buffer place.
Errors become JSON through `gateway/errors.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import MethodNotAllowed, send_error
from gateway.routes import FUNCTION_PREFIX, is_reserved_subpath
from gateway.upstream import InstanceGone, UpstreamPool
from nest.contracts.errors import NestError, NotFound, PayloadTooLarge

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from gateway.activator import Endpoint, VersionGate
    from gateway.routing import RoutingTable
    from nest.contracts.model import Route

DROP_REQUEST_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host"}
    | {b"content-length", b"expect", b"x-nest-invocation-id", b"x-forwarded-for"}
)
DROP_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"trailer", b"upgrade", b"date"}
    | {b"server", b"x-nest-recycle"}
)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    activation_timeout_s: float = 30.0
    """How long a request may wait in the activator for an instance (cold start or full instances)."""
    upstream_grace_s: float = 5.0
    """Added to the function timeout: the runtime enforces the timeout, this guards against a hung instance."""


class ClientDisconnected(Exception):
    """The client went away before its request was read; there is nobody to answer."""


class InvocationIds:
    """Unique, cheap invocation ids: a random per-process prefix and a counter (no uuid4 per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"


class FunctionProxy:
    """The ASGI app behind `/function/...`."""

    def __init__(self, table: RoutingTable, pool: UpstreamPool, config: ProxyConfig | None = None) -> None:
        self.table = table
        self.pool = pool
        self.config = config or ProxyConfig()
        self.ids = InvocationIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, subpath, route = self.table.resolve(scope["path"])
        invocation_id = self.ids.next()
        try:
            if route is None:
                raise NotFound("function", name) if name else NotFound("route", scope["path"])
            if is_reserved_subpath(subpath):
                raise NotFound("path", subpath)
            if route.methods and scope["method"] not in route.methods:
                allowed = ", ".join(sorted(route.methods))
                raise MethodNotAllowed("method", f"{scope['method']} is not allowed for {name} (allowed: {allowed})")
            body = await read_body(scope, receive, route.max_body_bytes)
            request = build_request(scope, route, subpath, body, invocation_id)
            await self._serve(scope, receive, send, route, request)
        except NestError as error:
            await send_error(send, error, function=name or None, invocation_id=invocation_id)
        except ClientDisconnected:
            return

    async def _serve(self, scope: Scope, receive: Receive, send: Send, route: Route, request: bytes) -> None:
        gate = self.table.gate(route.key)
        watcher = _DisconnectWatch(receive)
        try:
            for attempt in (1, 2):
                endpoint = gate.try_acquire()
                timing: list[tuple[bytes, bytes]] = []
                if endpoint is None:
                    waited_from = time.monotonic()
                    endpoint = await gate.acquire(timeout_s=self.config.activation_timeout_s)
                    timing = [server_timing((time.monotonic() - waited_from) * 1000, endpoint)]
                try:
                    await self._forward(
                        send, gate, endpoint, route, request, head_only=scope["method"] == "HEAD", extra=timing
                    )
                    return
                except InstanceGone:
                    self.table.remove_endpoint(route.key, endpoint.address.instance_id)
                    if attempt == 2:
                        raise
                finally:
                    gate.release(endpoint)
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the client went away: its slot and buffer place are free; nothing to answer
        finally:
            watcher.stop()

    async def _forward(
        self,
        send: Send,
        gate: VersionGate,
        endpoint: Endpoint,
        route: Route,
        request: bytes,
        *,
        head_only: bool,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        socket_path = endpoint.socket_path
        timeout_s = route.timeout_s + self.config.upstream_grace_s
        connection = await self.pool.request(socket_path, request, head_only=head_only, timeout_s=timeout_s)
        try:
            raw_headers = connection.headers
            headers = [item for item in raw_headers if item[0] not in DROP_RESPONSE_HEADERS]
            if extra:
                headers += extra
            if len(headers) != len(raw_headers) and any(name == b"x-nest-recycle" for name, _ in raw_headers):
                self.table.remove_endpoint(route.key, endpoint.address.instance_id)
            await send({"type": "http.response.start", "status": connection.status, "headers": headers})
            while True:
                chunk = await connection.read_body()
                if chunk is None:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    break
                last = connection.complete
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    break
        except BaseException:
            connection.abort()
            raise
        self.pool.finish(socket_path, connection)


def server_timing(waited_ms: float, endpoint: Endpoint) -> tuple[bytes, bytes]:
    """`Server-Timing` for a response that waited in the activator: the wait, and, if the instance it got was
    started for it, how that start went (e.g. `activator;dur=27.9, spawn;dur=11.2, init;dur=3.4`)."""
    parts = [f"activator;dur={waited_ms:.1f}"]
    if not endpoint.timing_sent:
        endpoint.timing_sent = True
        parts += [f"{name};dur={ms:.1f}" for name, ms in endpoint.address.start_phases]
    return b"server-timing", ", ".join(parts).encode()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing one over `limit` bytes before reading it all (413)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise PayloadTooLarge("body", limit) from None
            if declared > limit:
                raise PayloadTooLarge("request body", limit)
            break
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge("request body", limit)
        return body  # type: ignore[no-any-return]
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("request body", limit)
        parts.append(chunk)
    return b"".join(parts)


def build_request(scope: Scope, route: Route, subpath: str, body: bytes, invocation_id: str) -> bytes:
    """The bytes of the HTTP/1.1 request to the instance: method, the function's own path, filtered headers."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    prefix = f"{FUNCTION_PREFIX}{route.key.function}".encode()
    if raw_path.startswith(prefix):
        target = raw_path[len(prefix) :] or b"/"
    else:
        target = raw_path if subpath == scope["path"] else subpath.encode()
    query = scope["query_string"]
    if query:
        target += b"?" + query
    client = scope.get("client")
    lines = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\nhost: nest\r\n"]
    for name, value in scope["headers"]:
        if name not in DROP_REQUEST_HEADERS:
            lines += (name, b": ", value, b"\r\n")
    lines += (b"content-length: ", str(len(body)).encode(), b"\r\nx-nest-invocation-id: ", invocation_id.encode())
    if client:
        lines += (b"\r\nx-forwarded-for: ", client[0].encode())
    lines += (b"\r\n\r\n", body)
    return b"".join(lines)


class _DisconnectWatch:
    """Cancels the request's task if the client disconnects while it waits or is served (frees slot and place).

    Watching needs a task blocked in `receive()`; to keep that cost off fast requests, the task is only created
    once the request has taken `ARM_AFTER_S` (a timer handle costs far less than a task). A request that ends
    sooner is done before a disconnect could matter. It is disarmed before the response ends, because uvicorn
    answers `receive()` with a disconnect once the response is complete.
    """

    __slots__ = ("fired", "receive", "request_task", "task", "timer")

    ARM_AFTER_S = 0.02

    def __init__(self, receive: Receive) -> None:
        self.request_task = asyncio.current_task()
        self.receive = receive
        self.fired = False
        self.task: asyncio.Task[Message] | None = None
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(self.ARM_AFTER_S, self._arm)

    def _arm(self) -> None:
        self.timer = None
        self.task = asyncio.ensure_future(self.receive())
        self.task.add_done_callback(self._on_message)

    def _on_message(self, task: asyncio.Task[Message]) -> None:
        if self.task is None or task.cancelled() or task.exception() is not None:
            return
        if task.result()["type"] == "http.disconnect" and self.request_task is not None:
            self.fired = True
            self.request_task.cancel()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
