"""Start-up of an instance: limits, log capture, load the code, listen, say "ready", serve until told to stop.

The controller passes a pipe as `--status-fd`; exactly one JSON line goes down it: `{"event": "ready", ...}`
once the handler is imported and the socket listens, or `{"event": "init_failed", "error_type", "detail",
"traceback"}` (then exit code 3). Readiness is pushed, not polled, so a cold start pays no probe interval.
Exit codes: 0 after a drain (SIGTERM), 3 init failure, 75 recycled after an uninterruptible timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn
import uvloop

from nest.contracts.errors import InvalidInput
from runtime.archive import install as install_archive, is_archive
from runtime.fetch import FetchError, open_source
from runtime.limits import die_with_parent, limit_memory
from runtime.loading import LoadError, load_handler
from runtime.logs import CapturedStream, LogSink
from runtime.server import InvocationApp
from runtime.unpack import ensure_package

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from nest.contracts.chunks import ChunkRef
    from runtime.archive import ArchiveFinder
    from runtime.config import RuntimeConfig

T = TypeVar("T")
EXIT_INIT_FAILED = 3
_ARCHIVES: list[ArchiveFinder] = []
"""The archive finder this instance installed, if its package has `layout: archive`."""
EXIT_RECYCLED = 75
RECYCLE_GRACE_S = 0.05


def _report(fd: int, event: dict[str, Any]) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, json.dumps(event).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _listen(config: RuntimeConfig) -> list[socket.socket]:
    if os.path.exists(config.socket):
        os.unlink(config.socket)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(config.socket)
    os.chmod(config.socket, 0o600)
    unix.listen(1024)
    sockets = [unix]
    if config.tcp_port:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", config.tcp_port))
        tcp.listen(1024)
        sockets.append(tcp)
    return sockets


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_started: Any) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)


def _materialise(config: RuntimeConfig) -> dict[str, float]:
    """Fetch and unpack the code package into the node cache unless it is there, and put an archive's importer
    in place: `{fetch_ms, unpack_ms}` of the work done (nothing on a cache hit). The fetch modules and codecs are
    imported at the top so that the zygote has them: importing them here cost a forked instance ~15 ms."""
    if not config.package:
        return {}
    phases: dict[str, float] = {}
    try:
        if not os.path.isdir(config.code_dir):
            with open_source(config.code_url) as source:
                done = ensure_package(Path(config.code_dir), config.package, source)
            phases = {"fetch_ms": done.fetch_ms, "unpack_ms": done.unpack_ms}
        if is_archive(config.code_dir):
            _ARCHIVES.append(install_archive(config.code_dir, refetch=functools.partial(_refetch, config.code_url)))
    except (FetchError, InvalidInput, OSError, RuntimeError) as exc:  # RuntimeError: no thread under the rlimit
        raise LoadError("PackageError", f"code package {config.package[:12]}: {exc}", "") from None
    return phases


def _refetch(code_url: str, ref: ChunkRef) -> bytes:
    """One chunk again from the code store, verified: for an archive whose copy in the node cache was damaged."""
    with open_source(code_url) as source:
        return bytes(source.chunk(ref))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`main` on a new uvloop loop, closed after: what `uvloop.run` does without `asyncio.Runner`'s machinery
    (a SIGINT handler, a copied context, cancelling leftover tasks, shutting down executors and async
    generators), which an instance does not need (it exits right after) and whose code every forked instance
    would otherwise run and so copy the pages of: an idle pool instance ~0.15 MiB smaller (3.93 -> 3.71 MiB with
    `runtime/server.py` HandlerThreads; bench_density's idle ratio 0.198 -> 0.187)."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


def server_config(app: Any, config: RuntimeConfig) -> uvicorn.Config:
    """uvicorn's settings for an instance (the start-up rehearsals use them too).

    No proxy-headers middleware: the gateway reaches an instance over a Unix socket, whose peer has no address,
    so the middleware never trusted it and only cost each instance its setup (parsing the trusted addresses with
    `ipaddress`, ~0.1 MiB of copied pages) and each request a layer."""
    return uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        proxy_headers=False,
        lifespan="on" if config.style == "asgi" else "off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=300,
        timeout_graceful_shutdown=int(config.timeout_s) + 1,
        log_config=None,
        server_header=False,
        date_header=False,
    )


def run(config: RuntimeConfig) -> int:
    started = time.monotonic()
    die_with_parent()
    sink = LogSink(function=config.function, version=config.version, instance=config.instance)
    sys.stdout = CapturedStream(sink, stream="stdout", fd=1)
    sys.stderr = CapturedStream(sink, stream="stderr", fd=2)
    sink.system(limit_memory(config.memory_bytes, config.concurrency, address_space=config.memory_rlimit))
    try:
        code_phases = _materialise(config)
        # an archive caches its bytecode itself; the tree's path hook would shadow the archive's (`pkgutil` listing)
        tree = bool(config.package) and not _ARCHIVES
        handler = load_handler(config.code_dir, config.handler, style=config.style, bytecode=tree)
        for archive in _ARCHIVES:
            archive.stream.forget()  # the chunks the imports decoded: not kept for the instance's lifetime
    except MemoryError:
        failure = LoadError("MemoryError", f"importing the code needs more than memory ({config.memory_bytes} B)", "")
        _report(config.status_fd, failure.as_status())
        return EXIT_INIT_FAILED
    except LoadError as error:
        sink.system(f"init failed: {error.error_type}: {error.detail}\n{error.traceback}")
        _report(config.status_fd, error.as_status())
        return EXIT_INIT_FAILED
    app = InvocationApp(config, handler, sink)
    uv_config = server_config(app, config)

    def ready() -> None:
        init_ms = round((time.monotonic() - started) * 1000, 1)
        sink.system(f"ready in {init_ms} ms")
        _report(config.status_fd, {"event": "ready", "pid": os.getpid(), "init_ms": init_ms, **code_phases})

    server = _Server(uv_config, ready)

    def recycle() -> None:
        asyncio.get_running_loop().call_later(RECYCLE_GRACE_S, setattr, server, "should_exit", True)

    app.on_recycle = recycle
    run_loop(server.serve(sockets=_listen(config)))
    app.close()
    sys.stdout.flush()
    code = EXIT_RECYCLED if app.recycling else 0
    os._exit(code)  # a stuck handler thread must not keep the process alive
