"""A small HTTP/1.1 load generator for the benchmarks: keep-alive connections over TCP or a Unix socket.

The same generator measures the direct path (to an instance's socket) and the gateway path in one run, so its
own cost is in both figures and the ratio compares like with like. Responses are framed by Content-Length
(every Nest response to these benchmarks has one).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: `unix_path` for a Unix socket, else `host:port`; `path` is the request target."""

    path: str
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str = ""
    body: bytes = b'{"name":"bench"}'

    def request(self) -> bytes:
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(self.body)}\r\n\r\n"
        ).encode() + self.body


def _read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one response from a blocking socket; returns its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:head_end]).lower()
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in head else 0
    while len(buffer) < head_end + length:
        buffer += sock.recv(65536)
    status = int(head[9:12])
    del buffer[: head_end + length]
    return status


def _connect(target: Target) -> socket.socket:
    if target.unix_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target.unix_path)
    else:
        sock = socket.create_connection((target.host, target.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def latency(target: Target, *, requests: int, warmup: int = 200) -> dict[str, float]:
    """Sequential requests on one keep-alive connection (c=1); microsecond percentiles."""
    request = target.request()
    samples: list[float] = []
    with _connect(target) as sock:
        buffer = bytearray()
        for index in range(warmup + requests):
            started = time.perf_counter_ns()
            sock.sendall(request)
            status = _read_response(sock, buffer)
            elapsed = (time.perf_counter_ns() - started) / 1000
            if status != 200:
                raise RuntimeError(f"status {status} from {target}")
            if index >= warmup:
                samples.append(elapsed)
    samples.sort()
    return {
        "p50_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1),
    }


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, deadline: float, done: asyncio.Future[int]) -> None:
        self.request, self.deadline, self.done = request, deadline, done
        self.buffer = bytearray()
        self.count = 0
        self.errors = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        while b"\r\n\r\n" in self.buffer:
            head_end = self.buffer.index(b"\r\n\r\n") + 4
            head = bytes(self.buffer[:head_end]).lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(self.buffer) < head_end + length:
                return
            del self.buffer[: head_end + length]
            if head[9:12] == b"200":
                self.count += 1
            else:
                self.errors += 1
            if time.monotonic() >= self.deadline:
                self.transport.close()
                return
            self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.errors:
                self.done.set_exception(RuntimeError(f"{self.errors} non-200 responses during the throughput run"))
            else:
                self.done.set_result(self.count)


async def _throughput(target: Target, connections: int, duration_s: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + duration_s
    futures = [loop.create_future() for _ in range(connections)]
    request = target.request()
    started = time.monotonic()
    for future in futures:
        if target.unix_path:
            await loop.create_unix_connection(lambda f=future: _Client(request, deadline, f), target.unix_path)
        else:
            await loop.create_connection(lambda f=future: _Client(request, deadline, f), target.host, target.port)
    counts = await asyncio.gather(*futures)
    return sum(counts) / (time.monotonic() - started)


def throughput(target: Target, *, connections: int = 64, duration_s: float = 5.0) -> float:
    """Requests per second with `connections` keep-alive connections, each sending the next on each answer."""
    import uvloop

    return uvloop.run(_throughput(target, connections, duration_s))
