"""The zygote: a process that has already imported the runtime (and its pool's preloads) and forks instances.

A fresh interpreter that imports the runtime takes ~240 ms here; a fork of one that already did takes ~1-3 ms.
The controller starts one zygote per pool (`python -m runtime.zygote`), connects to its control socket
(SOCK_SEQPACKET: one message per spawn, with file descriptors attached) and asks it to spawn an instance:

    {"argv": [...runtime arguments...], "env": {...}, "cwd": "...", "platform_pid": 1234}
    + fds: [status pipe write end, log file]

The zygote double-forks, so the instance is re-parented to the platform (which set PR_SET_CHILD_SUBREAPER):
instances outlive a zygote crash, and die with the platform (PDEATHSIG is set only once the re-parenting is
seen). The instance reports on its status pipe exactly as a freshly started one does, preceded by
`{"event": "forked", "pid": N}` so the backend learns whom to watch. In the child, before user code runs: the
zygote's sockets are closed, stdout/stderr point at the log file, the environment and working directory are
the function's, signal handlers are reset and the random generators reseeded, so nothing of the zygote or of
other instances is reachable.

Deliberately not asyncio: the zygote must not have a running event loop (or any thread) when it forks.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module under `signal` (see `_reset_signals`)
import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import types
from typing import Any

import uvicorn.lifespan.off
import uvicorn.lifespan.on
import uvicorn.protocols.http.httptools_impl
import uvicorn.protocols.websockets.auto

import runtime.main
from runtime.config import RuntimeConfig, parse_args
from runtime.limits import close_inherited, die_with_parent, set_process_name
from runtime.rehearsal import rehearse, settle

MESSAGE_MAX = 256 * 1024
REPARENT_WAIT_S = 1.0


PYTHON_SIGNALS: dict[int, Any] = {
    _signal.SIGINT: _signal.default_int_handler,
    _signal.SIGPIPE: _signal.SIG_IGN,
    _signal.SIGXFSZ: _signal.SIG_IGN,
}
"""What a fresh interpreter installs (KeyboardInterrupt on SIGINT; EPIPE instead of death on SIGPIPE)."""


def _reset_signals() -> None:
    """Every handler and the signal mask back to what a fresh interpreter has, whatever the zygote inherited.

    Through `_signal`, the C module under `signal`, and only where a handler differs: `signal`'s wrappers turn
    every number into an enum member and back, and that enum machinery, run for each of ~64 signals, copied
    ~0.08 MiB of the zygote's pages in every instance (measured from outside on 3 forks)."""
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
    for sig in _signal.valid_signals():
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        wanted = PYTHON_SIGNALS.get(sig, _signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            if _signal.getsignal(sig) != wanted:
                _signal.signal(sig, wanted)


def _detach(request: dict[str, Any], closing: list[socket.socket]) -> None:
    """In the grandchild: shed the zygote, wait to be the platform's child, then die with it."""
    for sock in closing:
        sock.close()
    os.setsid()
    gc.enable()  # the zygote runs without the collector (see `serve`)
    _reset_signals()
    random.seed()
    deadline = time.monotonic() + REPARENT_WAIT_S
    while os.getppid() != request["platform_pid"] and time.monotonic() < deadline:
        time.sleep(0.0005)
    if os.getppid() != request["platform_pid"]:
        os._exit(71)  # the platform is gone (or is not our subreaper): do not run unsupervised
    die_with_parent()


def _specialize(claim: dict[str, Any], status_fd: int, log_fd: int) -> int:
    """Become one function's instance: its log, working directory and environment, then the runtime."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    close_inherited(keep=status_fd)
    os.chdir(claim["cwd"])
    # Key by key, not clear() and update(): their Mapping machinery (ABC checks, popitem) touched ~0.1 MiB of the
    # zygote's pages in every instance (measured from outside on 3 forks).
    for name in list(os.environ):
        del os.environ[name]
    for name, value in claim["env"].items():
        os.environ[name] = value
    random.seed()
    set_process_name("nest:" + claim["env"].get("NEST_FUNCTION", "instance"))
    return runtime.main.run(runtime_config([*claim["argv"], "--status-fd", str(status_fd)]))


OPTION_FIELDS = {"--timeout": "timeout_s"}
FLAGS = {"--debug": ("debug", True), "--no-memory-rlimit": ("memory_rlimit", False)}
FIELD_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}
FIELD_KINDS = {item.name: FIELD_TYPES.get(str(item.type)) for item in dataclasses.fields(RuntimeConfig)}
"""Each `RuntimeConfig` field's type, worked out once in the zygote rather than in every instance."""


def runtime_config(argv: list[str]) -> RuntimeConfig:
    """`parse_args(argv)` without argparse for the arguments the backend builds: argparse touches ~1 MiB of
    the zygote's pages on its first use in a child (copy-on-write: memory per instance and ~0.5 ms). Anything
    unexpected falls back to `parse_args`, so errors read the same."""
    types = FIELD_KINDS
    values: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        option = argv[index]
        if option in FLAGS:
            name, flag = FLAGS[option]
            values[name] = flag
            index += 1
            continue
        name = OPTION_FIELDS.get(option, option.removeprefix("--").replace("-", "_"))
        kind = types.get(name)
        if not option.startswith("--") or kind is None or kind is bool or index + 1 >= len(argv):
            return parse_args(argv)
        try:
            values[name] = kind(argv[index + 1])
        except ValueError:
            return parse_args(argv)
        index += 2
    try:
        return RuntimeConfig(**{"handler": "main:handle", "style": "native", **values})
    except TypeError:
        return parse_args(argv)


def _become_instance(request: dict[str, Any], fds: list[int], closing: list[socket.socket]) -> None:
    """A spawn on demand: detach, announce, specialize at once. Never returns."""
    status_fd, log_fd = fds
    code = 70
    try:
        _detach(request, closing)
        forked = {"event": "forked", "pid": os.getpid(), "marks": _marks(request)}
        os.write(status_fd, json.dumps(forked).encode() + b"\n")
        code = _specialize(request, status_fd, log_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"zygote child failed: {exc!r}\n".encode())
    os._exit(code)


def _become_idle(request: dict[str, Any], fds: list[int], closing: list[socket.socket]) -> None:
    """A generic instance forked ahead of need: detach, rehearse, announce, then wait for the platform to claim it
    with a function (its arguments, environment, working directory and log file). Never returns."""
    status_fd, claim_fd = fds
    code = 70
    try:
        _detach(request, closing)
        set_process_name("nest-idle")
        try:
            rehearse(request["_scratch"])
        except Exception as exc:  # the instance still works, its first request is only slower
            os.write(2, f"idle instance rehearsal failed: {exc!r}\n".encode())
        os.write(status_fd, json.dumps({"event": "forked", "pid": os.getpid(), "idle": True}).encode() + b"\n")
        claims = socket.socket(fileno=claim_fd)
        message, log_fds, _, _ = socket.recv_fds(claims, MESSAGE_MAX, 1)
        claims.close()
        if not message or len(log_fds) != 1:
            os._exit(0)  # released unclaimed (pool shrinking, platform stopping)
        code = _specialize(json.loads(message), status_fd, log_fds[0])
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"idle instance failed: {exc!r}\n".encode())
    os._exit(code)


def _marks(request: dict[str, Any]) -> dict[str, float]:
    """Milliseconds from the platform's request to each step, for the instance's start phases."""
    sent = float(request.get("sent_at", 0.0))
    marks = {name: round((at - sent) * 1000, 2) for name, at in request.get("_marks", {}).items()}
    marks["running"] = round((time.time() - sent) * 1000, 2)
    return marks


def _spawn(request: dict[str, Any], fds: list[int], closing: list[socket.socket], scratch: str) -> None:
    """Double fork, so the instance is re-parented to the platform (its subreaper), not kept by us."""
    request["_marks"] = {"received": time.time()}
    request["_scratch"] = scratch
    become = _become_idle if request.get("idle") else _become_instance
    child = os.fork()
    if child == 0:
        request["_marks"]["forked"] = time.time()
        if os.fork() == 0:
            request["_marks"]["forked_again"] = time.time()
            become(request, fds, closing)
        os._exit(0)
    for fd in fds:
        os.close(fd)
    os.waitpid(child, 0)


def _warm_up() -> None:
    """Run once what every instance runs first, so its lazy imports and caches (argparse's gettext lookups,
    ctypes' libc handle, uvicorn's config machinery) are paid here and shared by every fork."""
    parse_args(["--socket", "/dev/null", "--code-dir", "/", "--function", "f", "--version", "v", "--instance", "i"])
    set_process_name("nest-zygote")
    uvicorn.Config(app=lambda scope, receive, send: None, loop="none", http="httptools", log_config=None).load()


def serve(control_path: str, *, preload: list[str], status_fd: int, scratch: str | None = None) -> int:
    die_with_parent()
    close_inherited(keep=status_fd)
    set_process_name("nest-zygote")
    for module in preload:
        importlib.import_module(module)
    # Instances write no `__pycache__` (their environment says PYTHONDONTWRITEBYTECODE, which a fork does not
    # read): as a fresh interpreter's. The zygote's own imports above did, so that its next start finds them.
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGTERM, _stop)  # the platform stops us with SIGTERM: exit through the `finally` below
    # A private directory for the rehearsals' sockets (`runtime/rehearsal.py`): made once, so that no instance
    # pays for the temporary-file machinery. The platform makes it and removes it (`--scratch`: a zygote killed
    # during its start-up cannot); run alone, the zygote makes its own and removes it when it stops.
    own = scratch is None
    scratch = scratch if scratch is not None else tempfile.mkdtemp(prefix="nest-rehearsal-")
    try:
        settle(scratch, warm_up=_warm_up)
        return _serve(control_path, status_fd, scratch)
    finally:
        if own:
            shutil.rmtree(scratch, ignore_errors=True)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


DEBUG_DUMP = "NEST_ZYGOTE_DEBUG_DUMP"
"""Set to a path: the zygote writes where its objects lie before freezing, for `scripts/cow_pages.py`."""


def _dump_objects(path: str) -> None:
    """One JSON line per object reachable from those the collector tracks (and a code object's parts): address,
    size, type, owner (a module's dict; a code object's file, inherited by its constants and names). Debugging
    only; the dump allocates, so the heap differs slightly from an undebugged zygote's."""
    owners = {id(vars(module)): f"module {name}" for name, module in list(sys.modules.items())}
    seen: dict[int, tuple[int, str, str]] = {}
    pending: list[tuple[object, str]] = [(item, "") for item in gc.get_objects()]
    while pending:
        item, owner = pending.pop()
        if id(item) in seen:
            continue
        code = item.__code__ if isinstance(item, types.FunctionType) else item
        owner = owners.get(id(item)) or (code.co_filename if isinstance(code, types.CodeType) else owner)
        seen[id(item)] = (sys.getsizeof(item), type(item).__qualname__, owner)
        seen.update(_buffers(item, owner))
        parts = CODE_PARTS if isinstance(item, types.CodeType) else ()
        referents = [getattr(item, name) for name in parts] if parts else gc.get_referents(item)
        pending.extend((referent, owner if parts or isinstance(item, tuple) else "") for referent in referents)
    with open(path, "w") as out:
        for address, (size, kind, owner) in seen.items():
            out.write(json.dumps([address, size, kind, owner]) + "\n")


CODE_PARTS = ("co_consts", "co_names", "co_linetable", "co_exceptiontable", "co_name", "co_qualname", "co_filename")
"""A code object's parts stored in it (3.11); the collector does not see them."""


BUFFERS: dict[type, tuple[int, int, str]] = {dict: (32, 48, "dict keys"), list: (24, 56, "list items")}
"""Where a dict's key table and a list's item array are (pointer offset in the object, object size without)."""


def _buffers(item: object, owner: str) -> dict[int, tuple[int, str, str]]:
    """The separately allocated memory of a dict or a list, which copied pages often hold (CPython 3.11 layout)."""
    layout = BUFFERS.get(type(item))
    size = sys.getsizeof(item) - layout[1] if layout else 0
    pointer = ctypes.c_void_p.from_address(id(item) + layout[0]).value if layout and size > 0 else None
    return {pointer: (size, layout[2], owner)} if layout and pointer else {}


def _serve(control_path: str, status_fd: int, scratch: str) -> int:
    # The zygote runs with the collector off from its first line (`controller/warmpool.py` starts it so) and is
    # frozen without a collection: a collection would free objects and leave holes in shared pages that every
    # child's allocations then fill, copying the page (the `gc.freeze` recipe in Python's documentation).
    if DEBUG_DUMP in os.environ:
        _dump_objects(f"{os.environ[DEBUG_DUMP]}.{os.getpid()}")
    gc.freeze()
    if os.path.exists(control_path):
        os.unlink(control_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(control_path)
    os.chmod(control_path, 0o600)
    listener.listen(4)
    os.write(status_fd, json.dumps({"event": "ready", "pid": os.getpid()}).encode() + b"\n")
    os.close(status_fd)
    connection, _ = listener.accept()
    # Only the platform may ever talk to us: close the door behind it, so no instance can reach the zygote.
    listener.close()
    os.unlink(control_path)
    while True:
        message, fds, _, _ = socket.recv_fds(connection, MESSAGE_MAX, 2)
        if not message:
            return 0  # the platform closed the control socket: it is shutting down
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        _spawn(json.loads(message), list(fds), [connection], scratch)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.zygote")
    parser.add_argument("--control-socket", required=True)
    parser.add_argument("--preload", default="", help="comma-separated modules to import before forking")
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--scratch", help="a private directory for the rehearsals (made and removed by the caller)")
    args = parser.parse_args()
    preload = [name for name in args.preload.split(",") if name]
    return serve(args.control_socket, preload=preload, status_fd=args.status_fd, scratch=args.scratch)


if __name__ == "__main__":
    sys.exit(main())
