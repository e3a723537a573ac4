"""The gateway's HTTP/1.1 client to instances: pooled keep-alive connections over Unix sockets.

This is the per-request hot path, so it is a small `asyncio.Protocol` around `httptools`' response parser rather
than httpx (~1.5 ms per request measured here) or aiohttp: the request goes out as one `write()` of bytes the
proxy built, and the response head and body are handed over as they arrive. Connections are kept per socket
path and reused while the instance answers with keep-alive; a reused connection that fails before any response
byte (the instance closed it while idle) is retried once on a fresh one.

What to send and what to do with the answer is `gateway/proxy.py`'s business; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from nest.contracts.errors import BackendError, DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Callable

HIGH_WATER_BYTES = 256 * 1024
"""Pause reading from the instance when this much body is waiting for a slow client (bounded memory per request)."""
MAX_IDLE_PER_SOCKET = 128
"""Idle connections kept per instance; above the largest sensible `concurrency` of one instance."""


class InstanceGone(BackendError):
    """The instance could not be reached at all (no request bytes were delivered): safe to try another one."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an instance, carrying one request at a time."""

    def __init__(self, on_lost: Callable[[UpstreamConnection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self._on_lost = on_lost
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._head_only = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BackendError(f"the instance sent a malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(BackendError("the instance closed the connection before the response was complete"))
        self._on_lost(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if self._head_only:
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._disarm()
        self._wake()

    # used by the pool and the proxy

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(
            DeadlineExceeded("the instance's response", self._timeout_s, "the instance did not answer; it may be hung")
        )
        self.abort()

    def send(self, request: bytes, *, head_only: bool, timeout_s: float) -> None:
        """Write one request; the previous response must be complete. The whole exchange must end in `timeout_s`.

        One timer per request, not `asyncio.timeout` blocks: this is the hot path, and a timer handle is the
        cheapest deadline asyncio has.
        """
        self.status = 0
        self.headers = []
        self.complete = False
        self._chunks = []
        self._buffered = 0
        self._error = None
        self._got_bytes = False
        self._head_only = head_only
        self._timeout_s = timeout_s
        assert self.transport is not None
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._on_timeout)
        self.transport.write(request)

    async def read_head(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_body(self) -> bytes | None:
        """The body bytes received so far (waiting for some if none), or None once the message is complete."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks = []
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def failed_silently(self) -> bool:
        """Failed before the instance sent a single byte back."""
        return self._error is not None and not self._got_bytes

    def close(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True

    def abort(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.abort()
            self.closed = True


class UpstreamPool:
    """Keep-alive connections per instance socket. One pool per gateway."""

    def __init__(self) -> None:
        self._idle: dict[str, list[UpstreamConnection]] = {}

    async def _connect(self, socket_path: str) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(lambda: UpstreamConnection(self._forget), socket_path)
        except OSError as exc:
            raise InstanceGone(f"cannot connect to the instance at {socket_path}: {exc.strerror or exc}") from exc
        return protocol

    def _forget(self, connection: UpstreamConnection) -> None:
        for idle in self._idle.values():
            if connection in idle:
                idle.remove(connection)
                return

    async def request(
        self, socket_path: str, request: bytes, *, timeout_s: float, head_only: bool = False
    ) -> UpstreamConnection:
        """Send `request` and return the connection once the response head arrived. Give it back with `finish`."""
        idle = self._idle.get(socket_path)
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            connection.send(request, head_only=head_only, timeout_s=timeout_s)
            try:
                await connection.read_head()
            except BackendError:
                if connection.failed_silently:
                    connection.abort()
                    continue  # the instance closed this idle connection; try the next one, then a fresh one
                raise
            return connection
        connection = await self._connect(socket_path)
        connection.send(request, head_only=head_only, timeout_s=timeout_s)
        await connection.read_head()
        return connection

    def finish(self, socket_path: str, connection: UpstreamConnection) -> None:
        """Return a connection whose response was read to the end; anything else is closed."""
        if connection.complete and connection.keep_alive and not connection.closed:
            idle = self._idle.setdefault(socket_path, [])
            if len(idle) < MAX_IDLE_PER_SOCKET:
                idle.append(connection)
                return
        connection.close()

    def drop(self, socket_path: str) -> None:
        """Close every idle connection to an instance that left."""
        for connection in self._idle.pop(socket_path, []):
            connection.close()

    def close(self) -> None:
        for socket_path in list(self._idle):
            self.drop(socket_path)
