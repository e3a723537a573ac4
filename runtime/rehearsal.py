"""A rehearsal of an instance's start and first request: once in the zygote, then in each idle pool instance.

A forked instance's first start-up and first request are slow mostly because of copy-on-write: every page of
the zygote they touch (refcounts, the adaptive interpreter's inline caches, allocator state) is copied on the
first write, ~1,400 page faults for a hello function here. The rehearsal serves one request end to end through
the instance's path (uvloop, uvicorn with the instance's settings, httptools, the ASGI app, the handler thread
pool, the native adapter) with a throwaway handler, and it runs twice:

- In the zygote, once, before `gc.freeze()` (`settle`): what the path initialises lazily (imports, uvicorn's
  and asyncio's caches, the interpreter's type-attribute cache) is then done once and shared by every fork
  instead of being built, page by page, in each instance. Measured: unique memory of a claimed instance
  -0.45 MiB. Running it more often (to quicken the bytecode) gains nothing: quickened code is written to by its
  inline caches on every run, so instances copy it anyway. No collection follows: it would free objects and
  leave holes in shared pages that every child's allocations then fill, copying them. The code the rehearsal
  ran is then copied to fresh memory, side by side (`_relocate`). Measured with bench_density (3 runs each,
  alternated): idle pool instance 4.5 -> 4.0 MiB, claimed instance 5.5 -> 5.0 MiB. Rehearsing the copies once
  more (to specialise them here) gained nothing and cost the zygote's start-up ~0.2 s.
- In each idle instance, while it waits for a claim: the claimed instance then finds the pages it writes
  already its own. Measured with bench_cold_start: pool p50 13.0 ms -> 9.4 ms. It does only what a claimed
  instance does (no argparse, no temporary-directory machinery, a bare socket as the client): any other code
  it ran would copy pages no claimed instance needs (measured: ~1 MiB per instance before this was so).

Everything started here (loop, handler thread, socket) is closed before the claim; nothing of it is visible to
the function.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import marshal
import os
import socket
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

from runtime.archive import ARCHIVE_FILE, ARCHIVE_INDEX
from runtime.config import RuntimeConfig
from runtime.loading import load_handler
from runtime.logs import LogSink
from runtime.main import _ARCHIVES as ARCHIVES, _materialise, _Server as InstanceServer, run_loop, server_config
from runtime.server import InvocationApp

if TYPE_CHECKING:
    from collections.abc import Callable

REQUEST = (
    b"POST /rehearsal HTTP/1.1\r\nhost: rehearsal\r\nx-nest-invocation-id: rehearsal\r\n"
    b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)
RESPONSE_MAX = 64 * 1024
TIMEOUT_S = 5.0


def _handler(request: Any) -> dict[str, bool]:
    return {"rehearsed": True}


class _QuietSink(LogSink):
    def emit(self, stream: str, message: str, invocation_id: str | None, fd: int = 2) -> None:
        """Nothing of the rehearsal reaches a log."""


def _config(**fields: Any) -> RuntimeConfig:
    """A rehearsal's runtime configuration: a native handler, one at a time, no status pipe; `fields` on top."""
    base: dict[str, Any] = {
        "socket": "",
        "handler": "main:handle",
        "style": "native",
        "function": "rehearsal",
        "version": "v",
        "instance": "rehearsal",
        "timeout_s": 30.0,
        "concurrency": 1,
        "memory_bytes": 256 * 1024**2,
        "status_fd": -1,
    }
    return RuntimeConfig(**{**base, **fields})


def rehearse(scratch: str, *, join: bool = False) -> None:
    """Start a server on a socket in `scratch` (a private directory), serve one request, stop, clean up.

    `join`: wait for the handler thread to end (the zygote must fork with no thread but its own)."""
    path = os.path.join(scratch, f"{os.getpid()}.sock")
    config = _config(socket=path, code_dir=scratch)
    app = InvocationApp(config, _handler, _QuietSink(function="rehearsal", version="v", instance="rehearsal"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        run_loop(_exchange(app, config, listener, path))
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        app.close(wait=join)


async def _exchange(app: InvocationApp, config: RuntimeConfig, listener: socket.socket, path: str) -> None:
    started = asyncio.Event()
    server = InstanceServer(server_config(app, config), started.set)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await started.wait()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.setblocking(False)
                await loop.sock_connect(client, path)
                await loop.sock_sendall(client, REQUEST)
                response = b""
                while b"\r\n\r\n" not in response and len(response) < RESPONSE_MAX:
                    chunk = await loop.sock_recv(client, 4096)
                    if not chunk:
                        break
                    response += chunk
    finally:
        server.should_exit = True
        await serving


LOADED_MODULE = "_nest_rehearsal_handler"
"""The throwaway module `rehearse_load` imports (removed after; a name no function's module is likely to have)."""


def rehearse_load(scratch: str) -> None:
    """Load a throwaway handler from an archive package made in `scratch`, as a claimed instance loads its
    function's (`runtime/main.py`: the layout check, the archive's finder, the import, the bytecode sidecar
    written the first time and read the second), then undo it all (finder, module, `sys.path`, writer thread).

    In the zygote only (`settle`), so that the code it runs is relocated with the rest: measured from outside
    on 3 forks, a claimed instance's unique memory -0.1 MiB (the claim path's code lay where import put it)."""
    code_dir = os.path.join(scratch, "package")
    os.makedirs(code_dir, exist_ok=True)
    source = b"def handle(request):\n    return {'rehearsed': True}\n"
    path = f"{LOADED_MODULE}.py"
    with open(os.path.join(code_dir, ARCHIVE_FILE), "wb") as file:
        file.write(source)
    index = ({path: (0, len(source))}, {LOADED_MODULE: (path, False)}, "none", ((0, len(source), len(source), ""),))
    with open(os.path.join(code_dir, ARCHIVE_INDEX), "wb") as file:
        marshal.dump(index, file)
    config = _config(
        code_dir=code_dir, handler=f"{LOADED_MODULE}:handle", package="0" * 64, code_url="file:///nonexistent"
    )
    path_before = list(sys.path)
    for _ in range(2):  # compiled (pyc written), then from the pyc: what the first and later instances do
        try:
            _materialise(config)
            load_handler(config.code_dir, config.handler, style=config.style, bytecode=False)
            for finder in ARCHIVES:
                finder.bytecode.flush()
                finder.stream.forget()
        finally:
            for finder in ARCHIVES:
                finder.uninstall()
            ARCHIVES.clear()
            sys.modules.pop(LOADED_MODULE, None)
            sys.path[:] = path_before


MOVED_FROM: list[types.CodeType] = []
"""The code objects `_relocate` replaced, kept alive in the zygote: freed, they would leave holes in shared
pages that every instance's allocations fill, copying those pages."""


def settle(scratch: str, *, warm_up: Callable[[], None] | None = None) -> None:
    """In the zygote, before `gc.freeze()`: `warm_up` (what else every instance runs), a rehearsal of an
    instance's serving and of its loading a package, so that every fork shares what those paths initialise;
    then move the code all of it ran to fresh memory, side by side (`_relocate`).

    A failure is reported and tolerated (instances then initialise it themselves); a thread left running is
    not: forking with one would hand each instance a copy of a thread that does not exist."""

    try:
        claiming = _executed(warm_up) if warm_up is not None else {}
        serving = _executed(lambda: rehearse(scratch, join=True))
        claiming.update(_executed(lambda: rehearse_load(scratch)))
        # What an idle instance runs first and apart: it then touches the serving path's pages only, not the
        # claim path's too (measured from outside: 0.07 MiB per idle instance).
        MOVED_FROM.extend(_relocate(serving))
        MOVED_FROM.extend(_relocate({key: code for key, code in claiming.items() if key not in serving}))
    except Exception as exc:
        sys.stderr.write(f"zygote rehearsal failed: {exc!r}\n")
    if threading.active_count() != 1:
        raise RuntimeError(f"threads left running after the zygote's rehearsal: {threading.enumerate()}")


def _executed(run: Callable[[], None]) -> dict[int, types.CodeType]:
    """The code objects `run` executes, in any thread, by address."""
    seen: dict[int, types.CodeType] = {}

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            seen[id(frame.f_code)] = frame.f_code

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


def _relocate(hot: dict[int, types.CodeType]) -> list[types.CodeType]:
    """Give every function whose code is in `hot` a copy of that code, the copies allocated together.

    Why: CPython 3.11 writes to a code object on every call (its reference count, for the frame; its warm-up
    counter and inline caches), so each instance copies every page holding code it runs. Where import put
    them, the ~280 code objects an instance runs (~125 KiB) lie on ~240 pages, among code it never runs;
    copied side by side they lie on ~100. Returns the originals (see `MOVED_FROM`)."""
    copies: dict[int, types.CodeType] = {}

    def copy(code: types.CodeType) -> types.CodeType:
        if id(code) not in copies:  # nested code too: functions the hot code creates run it
            consts = tuple(copy(c) if isinstance(c, types.CodeType) and id(c) in hot else c for c in code.co_consts)
            copies[id(code)] = code.replace(co_consts=consts)
        return copies[id(code)]

    for code in hot.values():
        copy(code)
    for item in gc.get_objects():
        if isinstance(item, types.FunctionType) and id(item.__code__) in copies:
            item.__code__ = copies[id(item.__code__)]
    return list(hot.values())
