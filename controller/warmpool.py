"""The warm pool on one machine: a zygote process per pool that forks instances in milliseconds.

`ZygotePool.start()` launches `python -m runtime.zygote` (which imports the runtime and the pool's preloads once)
and connects to its control socket; `spawn()` sends one request with the instance's status pipe and log file
attached and returns at once: the instance announces its pid (`{"event": "forked"}`) and then its readiness on
the status pipe, like a freshly started one. The platform process is made a child subreaper, so forked
instances are re-parented to it (they survive a zygote crash) and `ForkedProcess` can wait for them through a
pidfd. A pool whose zygote died is restarted on the next spawn (or by `controller/pooling.py`'s tick). Each
start is a new `generation` of the pool; what is forked records its generation, so instances of a replaced
zygote can be replaced in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("nest.warmpool")

PR_SET_CHILD_SUBREAPER = 36
DEFAULT_PRELOAD = ("json", "asyncio", "concurrent.futures", "starlette.applications", "nest.sdk")
"""What every default-pool instance finds imported: the runtime itself plus modules most handlers touch."""
ZYGOTE_BOOT = "import gc; gc.disable(); from runtime.zygote import main; raise SystemExit(main())"
"""`python -m runtime.zygote` with the collector off before the first import (see `runtime.zygote.serve`)."""
ZYGOTE_START_TIMEOUT_S = 30.0
STATUS_LINE_MAX = 64 * 1024


def become_subreaper() -> bool:
    """Adopt orphaned descendants (the zygote's grandchildren). Linux only; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class ForkedProcess:
    """An instance forked by a zygote and re-parented to us: the subset of `asyncio.subprocess.Process` we use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done: asyncio.Future[int] | None = None

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            try:
                pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                self._reap()
                return self.returncode if self.returncode is not None else -1
            loop.add_reader(pidfd, self._on_exit, loop, pidfd)
        return await asyncio.shield(self._done)

    def _on_exit(self, loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        self._reap()
        if self._done is not None and not self._done.done():
            self._done.set_result(self.returncode if self.returncode is not None else -1)

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.returncode = -1  # not our child after all (no subreaper): the exit code is unknowable

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@dataclass(frozen=True, slots=True)
class Claim:
    """What makes a generic instance one function's instance: runtime arguments, environment, working dir."""

    argv: list[str]
    env: dict[str, str]
    cwd: str

    def message(self, **extra: object) -> dict[str, object]:
        return {"argv": self.argv, "env": self.env, "cwd": self.cwd, **extra}


@dataclass(slots=True)
class IdleInstance:
    """A generic instance forked ahead of need: its process, its status pipe, and the socket that claims it."""

    process: ForkedProcess
    reader: asyncio.StreamReader
    transport: asyncio.BaseTransport
    claims: socket.socket
    cgroup: Path | None = None
    """Its memory cgroup, created while it was idle (the claim only sets the function's cap)."""
    generation: int = 0
    """The generation of the zygote it was forked from."""
    born_at: float = field(default_factory=time.monotonic)

    def claim(self, claim: Claim, *, log_fd: int) -> None:
        """Make it one function's instance (it replies on its status pipe). Raises OSError if it died idle."""
        try:
            socket.send_fds(self.claims, [json.dumps(claim.message()).encode()], [log_fd])
        finally:
            self.claims.close()

    async def release(self) -> None:
        """Let it go unclaimed: it exits, and is reaped here (its cgroup goes too)."""
        self.claims.close()
        self.transport.close()
        await self.process.wait()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


async def open_status_pipe(read_end: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio reader over the read end of an instance's status pipe (one JSON object per line)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STATUS_LINE_MAX)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
    )
    return reader, transport


@dataclass(slots=True)
class ZygotePool:
    """One pool: its zygote process and the control connection to it."""

    name: str
    control_path: Path
    python: str
    import_root: str
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    process: asyncio.subprocess.Process | None = None
    connection: socket.socket | None = None
    generation: int = 0
    """Incremented by every start: instances forked by an earlier generation are due for replacement."""
    environment: dict[str, str] = field(default_factory=dict)
    """The zygote's environment, on top of what it needs to start (`PYTHONPATH`, `MALLOC_ARENA_MAX`) and the debug
    switch `NEST_ZYGOTE_DEBUG_DUMP`: none of the platform's own environment, which a preload could otherwise
    capture at import into memory every instance shares, and whose variables each instance would have to delete
    again (touching objects of the zygote's: ~0.05 MiB of copied pages per instance)."""
    scratch: str | None = None
    """The zygote's private directory for its rehearsals' sockets (`runtime/rehearsal.py`): made and removed here,
    not by the zygote, so that a zygote killed during its start-up (the platform stopping then) leaves nothing."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def restart(self) -> None:
        """A new zygote in place of a dead one (or of a live one: it is stopped first)."""
        async with self._lock:
            await self.close()
            await self.start()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.close()  # the process, if any, and the scratch directory
            raise

    async def _start(self) -> None:
        read_end, write_end = os.pipe()
        debug = {name: value for name, value in os.environ.items() if name == "NEST_ZYGOTE_DEBUG_DUMP"}
        env = {**self.environment, **debug, "PYTHONPATH": self.import_root, "MALLOC_ARENA_MAX": "2"}
        prefix = f"nest-rehearsal-{hashlib.sha256(str(self.control_path).encode()).hexdigest()[:12]}-"
        remove_stale(prefix)
        self.scratch = tempfile.mkdtemp(prefix=prefix)
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.python,
                *("-c", ZYGOTE_BOOT, "--control-socket", str(self.control_path), "--scratch", self.scratch),
                *("--preload", ",".join(self.preload), "--status-fd", str(write_end)),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_end,),
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        async with asyncio.timeout(ZYGOTE_START_TIMEOUT_S):
            line = await asyncio.to_thread(_read_line, read_end)
        if not line or json.loads(line).get("event") != "ready":
            raise RuntimeError(f"the {self.name} pool's zygote did not start (exit code {self.process.returncode})")
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.connect(str(self.control_path))
        self.connection = connection
        self.generation += 1
        logger.info("warm pool %r ready (zygote pid %d, preloads %s)", self.name, self.process.pid, self.preload)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and self.connection is not None

    async def spawn(self, request: dict[str, object], *, status_fd: int, log_fd: int) -> None:
        """Ask the zygote to fork an instance; the fds are passed to it (ours stay open for the caller to close)."""
        await self._send(request, [status_fd, log_fd])

    async def prepare(self, *, platform_pid: int) -> IdleInstance:
        """Fork a generic instance ahead of need; it waits, detached and re-parented, to be claimed."""
        read_end, write_end = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await self._send({"idle": True, "platform_pid": platform_pid}, [write_end, theirs.fileno()])
        except BaseException:
            os.close(read_end)
            ours.close()
            raise
        finally:
            os.close(write_end)
            theirs.close()
        try:
            reader, transport = await open_status_pipe(read_end)
        except BaseException:
            ours.close()
            raise
        try:
            async with asyncio.timeout(ZYGOTE_START_TIMEOUT_S):
                line = json.loads(await reader.readline() or b"{}")
        except (TimeoutError, ValueError):
            line = {}
        except BaseException:  # cancelled (shutdown): the child exits once its claim socket closes
            transport.close()
            ours.close()
            raise
        if line.get("event") != "forked":
            transport.close()
            ours.close()
            raise RuntimeError(f"the {self.name} pool did not fork an idle instance")
        return IdleInstance(ForkedProcess(int(line["pid"])), reader, transport, ours, generation=self.generation)

    async def _send(self, request: dict[str, object], fds: list[int]) -> None:
        async with self._lock:
            if not self.alive:
                await self.close()
                await self.start()
            assert self.connection is not None
            payload = json.dumps(request).encode()
            try:
                socket.send_fds(self.connection, [payload], fds)
            except OSError:
                await self.close()
                await self.start()
                assert self.connection is not None
                socket.send_fds(self.connection, [payload], fds)

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.process = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def remove_stale(prefix: str) -> None:
    """Remove the scratch directories (`ZygotePool.scratch`) that earlier zygotes of this pool left in the temp
    directory: only a platform killed outright (SIGKILL, a crash) leaves one, and nothing else could remove it.
    Only directories of ours are touched (not symlinks, owned by this user)."""
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                shutil.rmtree(entry.path, ignore_errors=True)


def _read_line(fd: int) -> bytes:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        data = b""
        while not data.endswith(b"\n"):
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
        return data


def process_alive(pid: int) -> bool:
    """Whether `pid` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (instances and zygotes run in their own sessions); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
