"""A rehearsal of an instance's start and first request, run by an idle pool instance before it is claimed.

A forked instance's first start-up and first request are slow mostly because of copy-on-write: every page of
the zygote they touch (refcounts, the adaptive interpreter's inline caches, allocator state) is copied on the
first write, ~1,700 page faults for a hello function here. An idle instance has nothing better to do while it
waits for a claim, so it serves one request end to end through the same path (uvloop, uvicorn with the
instance's settings, httptools, the ASGI app, the handler thread pool, the native adapter) with a throwaway
handler: the claimed instance then finds those pages already its own. Measured with bench_cold_start: pool
p50 13.0 ms -> 9.4 ms, for ~0.5 MiB more unique memory per instance.

Not run in the zygote itself: there it would leave freed holes in shared pages that every child then fills
(measured: p50 12.8 -> 15.3 ms). Everything started here (loop, handler thread, socket) is closed before the
claim; nothing of it is visible to the function.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import TYPE_CHECKING, Any

import uvloop

from runtime.config import parse_args
from runtime.logs import LogSink
from runtime.main import _Server as InstanceServer, server_config
from runtime.server import InvocationApp

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig

REQUEST = (
    b"POST /rehearsal HTTP/1.1\r\nhost: rehearsal\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)


def _handler(request: Any) -> dict[str, bool]:
    return {"rehearsed": True}


class _QuietSink(LogSink):
    def emit(self, stream: str, message: str, invocation_id: str | None, fd: int = 2) -> None:
        """Nothing of the rehearsal reaches a log."""


def rehearse() -> None:
    """Start a server on a scratch socket, serve one request, stop, and clean everything up."""
    with tempfile.TemporaryDirectory(prefix="nest-rehearsal-") as scratch:
        path = os.path.join(scratch, "s")
        argv = ["--socket", path, "--code-dir", scratch, "--function", "rehearsal", "--version", "v"]
        config = parse_args([*argv, "--instance", "rehearsal", "--concurrency", "1"])
        app = InvocationApp(config, _handler, _QuietSink(function="rehearsal", version="v", instance="rehearsal"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
            uvloop.run(_exchange(app, config, listener, path))
        finally:
            listener.close()
            app.close()


async def _exchange(app: InvocationApp, config: RuntimeConfig, listener: socket.socket, path: str) -> None:
    started = asyncio.Event()
    server = InstanceServer(server_config(app, config), started.set)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(5):
            await started.wait()
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(REQUEST)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
    finally:
        server.should_exit = True
        await serving
