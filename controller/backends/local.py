"""The local backend: instances as child processes of `nest up` on this machine.

Each instance gets a private working directory (its cwd, HOME and TMPDIR), a Unix socket, the function's
environment and nothing else of ours, and its stdout/stderr appended to the function's log file. It is started
with `asyncio.create_subprocess_exec` (never a shell) in its own session, and reports on a status pipe: READY,
or INIT_FAILED with the reason; a watcher task per instance turns that and the process exit into events. A
health loop pings every ready instance; one that fails `health_failures` pings in a row is killed (UNHEALTHY,
then EXITED). The runtime sets PDEATHSIG, and cancelling `run()` kills whatever is left.

What to start and stop is decided by `controller/reconciler.py`; this module only does it (after uvicorn's
`supervisors/multiprocess.py`: start, ping, terminate, kill, join).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from controller.backends.base import EventKind, InstanceEvent, InstanceSpec
from controller.backends.cgroups import Cgroups, detect, remove_tree
from controller.backends.usage import Target, UsageMeter
from controller.pooling import PoolsConfig, WarmPools
from controller.warmpool import Claim, ForkedProcess, kill_group, open_status_pipe
from nest.contracts.model import InitFailure, InstanceAddress

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from nest.contracts.ids import InstanceId
    from nest.contracts.model import VersionKey
    from nest.contracts.pools import PoolSettings

logger = logging.getLogger("nest.backend")

LOG_ROTATE_BYTES = 10 * 1024**2
IDLE_MEMORY_BYTES = 256 * 1024**2
"""Cap of an idle pool instance's cgroup until a claim sets the function's own."""
STATUS_LINE_MAX = 64 * 1024
REFILL_AFTER_READY_S = 0.02
"""A claimed instance's pool is refilled this long after it is ready, not at once: the zygote's fork and the new
idle instance's rehearsal take the CPU that forwarding the waiting requests needs (bench_cold_start through the
gateway, 50 cold starts, alternated runs: p50 10.1-11.5 -> 7.0-7.5 ms, p98 26-28 -> 10-11 ms)."""


@dataclass(frozen=True, slots=True)
class LocalBackendConfig:
    run_dir: Path
    log_dir: Path
    python: str = sys.executable
    runtime_module: str = "runtime"
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    health_failures: int = 2
    start_timeout_s: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    code_url: str = ""
    """Base URL of the code store (`http://host:port/api/v1/code`) that instances fetch packages from."""
    code_cache: Path | None = None
    """The node's unpacked-package cache; default `<run_dir>/../cache`."""
    use_cgroups: bool = True
    warm_pool: bool = True
    """Fork instances from a pre-imported zygote (milliseconds) unless a function says `pool: none`."""
    pools: dict[str, PoolSettings] = field(default_factory=dict)
    """Operator-declared pools (and `default`'s settings): preloads, idle sizes, TTL (see controller/pooling.py)."""
    """Cap memory with a cgroup where the machine allows it (the runtime's rlimit applies everywhere)."""


@dataclass(slots=True)
class _Process:
    spec: InstanceSpec
    process: ForkedProcess | None
    """None until a pool-forked instance announced its pid."""
    socket_path: str
    workdir: Path
    ready: bool = False
    stop_requested: bool = False
    failed_pings: int = 0
    timed_out: bool = False
    cgroup: Path | None = None
    started_at: float = field(default_factory=time.monotonic)
    forked_at: float | None = None
    generation: int | None = None
    """The generation of the pool's zygote it was forked from; None for a fresh interpreter."""
    fork_marks: dict[str, float] = field(default_factory=dict)
    """From the pool: milliseconds from the request to `received`, `forked`, `forked_again`, `running`."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class LocalBackend:
    """Child processes, watched. `run()` must be running for `start()` to work."""

    def __init__(self, config: LocalBackendConfig, on_event: Callable[[InstanceEvent], None]) -> None:
        self._config = config
        self._on_event = on_event
        self._processes: dict[InstanceId, _Process] = {}
        self._group: asyncio.TaskGroup | None = None
        self._cgroups: Cgroups | None = None
        self._import_root = str(Path(__file__).resolve().parents[2])  # where `runtime` and `nest` are importable
        self.warm_pools = WarmPools(
            PoolsConfig(config.run_dir, config.python, self._import_root, dict(config.pools), self._base_environment()),
            confine=self._confine_idle,
            on_stale=self._replace_stale,
        )
        self._warm: WarmPools | None = None
        """The pools once started (None: warm pool off or unavailable)."""
        self.on_stale: Callable[[InstanceId], None] | None = None
        """Called for each instance due for replacement (its zygote died or its pool changed); the fleet
        starts a replacement and drains this one once the replacement is ready."""
        self._claimed: dict[InstanceId, Path | None] = {}
        """Instances that were idle pool instances, for naming their start phase."""
        self._meter = UsageMeter()
        self._metering = asyncio.Lock()

    async def usage(self) -> dict[VersionKey, tuple[float | None, float | None]]:
        """(mean cores since the previous call, bytes held now) per version with ready instances.

        The autoscaler's `UsageSource` port, called once a tick (not per request): reads every ready instance's
        counters off the event loop (`controller/backends/usage.py`; a `None` is a figure not known yet, e.g.
        the CPU of instances all sampled for the first time). Instances still starting are left out: their
        start-up is not load.
        """
        targets = [
            Target(instance_id, entry.spec.key, entry.process.pid, entry.cgroup)
            for instance_id, entry in self._processes.items()
            if entry.ready and entry.process is not None and entry.process.returncode is None
        ]
        async with self._metering:
            if targets:
                measured = await asyncio.to_thread(self._meter.measure, targets, self._cgroups)
            else:  # nothing to read: no thread hop (an idle platform ticks every second)
                measured = self._meter.measure(targets, self._cgroups)
        return {key: (usage.cores, usage.memory_bytes) for key, usage in measured.items()}

    def last_usage(self, key: VersionKey) -> tuple[float | None, float | None, int]:
        """(cores, bytes, instances sampled) of a version at the last `usage` call, for `nest describe`."""
        usage = self._meter.last.get(key)
        return (usage.cores, usage.memory_bytes, usage.instances) if usage is not None else (None, None, 0)

    async def run(self) -> None:
        for sub in ("sockets", "instances"):
            (self._config.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self._config.log_dir.mkdir(parents=True, exist_ok=True)
        if self._config.use_cgroups:
            self._cgroups = await asyncio.to_thread(detect, owner=os.getpid())
            logger.info("memory limits: %s", f"cgroups under {self._cgroups.base}" if self._cgroups else "rlimits only")
        if self._config.warm_pool and await self.warm_pools.start():
            self._warm = self.warm_pools
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._health_loop())
                if self._warm is not None:
                    group.create_task(self._warm.run())
        finally:
            self._group = None
            await self._abandon_all()

    async def _abandon_all(self) -> None:
        """Shutdown (or cancellation): kill what is left, reap it, and remove what it leaves on disk."""
        entries = list(self._processes.values())
        for entry in entries:
            _kill(entry.process)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                for entry in entries:
                    if entry.process is not None:
                        await entry.process.wait()
        for entry in entries:
            self._cleanup(entry)
        if self._warm is not None:
            await self._warm.close()
        if self._cgroups is not None:
            remove_tree(self._cgroups.base)

    def _base_environment(self) -> dict[str, str]:
        """What every instance's environment starts from; a pool's zygote gets it with the operator's extra
        variables and nothing else (`ZygotePool.environment`)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "MALLOC_ARENA_MAX": "2",  # bounds the address space threads reserve (see runtime/limits.py)
            **self._config.extra_env,
        }

    def _environment(self, spec: InstanceSpec, workdir: Path) -> dict[str, str]:
        python_path = os.pathsep.join(filter(None, [self._import_root, os.environ.get("PYTHONPATH", "")]))
        return {
            **self._base_environment(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # what a pooled instance inherits from its zygote (`runtime/zygote.py`)
            "PYTHONPATH": python_path,
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "NEST_FUNCTION": spec.key.function,
            "NEST_VERSION": spec.key.version,
            "NEST_INSTANCE": spec.instance_id,
            **self._config.extra_env,
            **spec.env,
        }

    def _socket_path(self, instance_id: InstanceId) -> str:
        path = self._config.run_dir / "sockets" / f"{instance_id}.sock"
        if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            path = path.with_name(hashlib.sha256(instance_id.encode()).hexdigest()[:16] + ".sock")
        return str(path)

    def _open_log(self, function: str) -> int:
        path = self._config.log_dir / f"{function}.log"
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > LOG_ROTATE_BYTES:
                path.replace(path.with_suffix(".log.1"))
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _code_arguments(self, spec: InstanceSpec) -> list[str]:
        """Where the code is: a chunked package lands in the node cache, `<cache>/<xx>/<digest>` (`runtime/fetch.py`
        fetches and unpacks it there on the first start of the version on this node, later starts find it)."""
        if not spec.package:
            return ["--code-dir", str(spec.code_dir)]
        cache = self._config.code_cache or self._config.run_dir.parent / "cache"
        code_dir = cache / spec.package[:2] / spec.package
        return ["--code-dir", str(code_dir), "--package", spec.package, "--code-url", self._config.code_url]

    async def start(self, spec: InstanceSpec) -> None:
        if self._group is None:
            raise RuntimeError("LocalBackend.run() is not running")
        workdir = self._config.run_dir / "instances" / spec.instance_id
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        socket_path = self._socket_path(spec.instance_id)
        arguments = [
            *("--socket", socket_path, *self._code_arguments(spec)),
            *("--handler", spec.handler, "--style", spec.handler_style, "--function", spec.key.function),
            *("--version", spec.key.version, "--instance", spec.instance_id, "--timeout", str(spec.timeout_s)),
            *("--concurrency", str(spec.concurrency), "--memory-bytes", str(spec.memory_bytes)),
            *(["--debug"] if spec.debug else []),
            *(["--no-memory-rlimit"] if self._cgroups is not None else []),
        ]
        claim = Claim(arguments, self._environment(spec, workdir), str(workdir))
        log_fd = self._open_log(spec.key.function)
        try:
            process, reader, transport, generation = await self._launch(spec, claim, log_fd)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            os.close(log_fd)
        entry = _Process(spec, process, socket_path, workdir, generation=generation)
        if spec.instance_id in self._claimed:
            entry.cgroup = self._claimed[spec.instance_id]
        elif process is not None:
            self._confine(entry, process.pid)
        self._processes[spec.instance_id] = entry
        self._group.create_task(self._watch(entry, reader, transport))

    async def _launch(
        self, spec: InstanceSpec, claim: Claim, log_fd: int
    ) -> tuple[ForkedProcess | None, asyncio.StreamReader, asyncio.BaseTransport, int | None]:
        """Start the process: claim an idle pool instance, or have the pool fork one, or exec a fresh one.
        The process is None until a pool-forked instance announces its pid on the status pipe; the generation is
        that of the zygote it comes from (None for a fresh interpreter)."""
        idle = self._warm.take(spec.pool) if self._warm is not None else None
        if idle is not None:
            if idle.cgroup is not None and self._cgroups is not None:
                self._cgroups.limit(idle.cgroup, spec.memory_bytes)
            idle.claim(claim, log_fd=log_fd)
            self._claimed[spec.instance_id] = idle.cgroup
            return idle.process, idle.reader, idle.transport, idle.generation
        read_end, write_end = os.pipe()
        generation = None
        try:
            pool = self._warm.zygote(spec.pool) if self._warm is not None else None
            process: SpawnedProcess | None = None
            if pool is not None:
                request = claim.message(platform_pid=os.getpid(), sent_at=time.time())
                await pool.spawn(request, status_fd=write_end, log_fd=log_fd)
                generation = pool.generation
            else:
                argv = [self._config.python, "-m", self._config.runtime_module, *claim.argv]
                process = await spawn_fresh([*argv, "--status-fd", str(write_end)], claim, write_end, log_fd)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        reader, transport = await open_status_pipe(read_end)
        return process, reader, transport, generation

    async def _confine_idle(self, pid: int) -> Path | None:
        """An idle pool instance's memory cgroup, created while it waits (a claim only sets the function's cap)."""
        if self._cgroups is None:
            return None
        return await asyncio.to_thread(self._cgroups.place, f"idle-{pid}", pid, IDLE_MEMORY_BYTES)

    def _replace_stale(self, pool: str, generation: int) -> None:
        """Instances forked by a zygote older than `generation` of `pool`: have each replaced, traffic kept."""
        for instance_id, entry in list(self._processes.items()):
            stale = entry.generation is not None and entry.generation < generation
            if entry.spec.pool == pool and stale and not entry.stop_requested and self.on_stale is not None:
                entry.generation = None  # asked once
                self.on_stale(instance_id)

    def _spawn_task(self, work: Coroutine[object, object, None]) -> None:
        if self._group is None:
            work.close()
            return
        self._group.create_task(work)

    def _confine(self, entry: _Process, pid: int) -> None:
        """Put the instance in its memory cgroup, off the event loop (creating a group can take ~10 ms)."""
        if self._cgroups is not None:
            self._spawn_task(self._place(self._cgroups, entry, pid))

    async def _place(self, cgroups: Cgroups, entry: _Process, pid: int) -> None:
        entry.cgroup = await asyncio.to_thread(cgroups.place, entry.spec.instance_id, pid, entry.spec.memory_bytes)
        if entry.exited.is_set() and entry.cgroup is not None:
            Cgroups.remove(entry.cgroup)

    async def _watch(self, entry: _Process, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        spec = entry.spec
        line = await self._read_status(entry, reader, transport)
        if self._warm is not None:  # not at once: the fork and its rehearsal would slow the requests it waited for
            asyncio.get_running_loop().call_later(REFILL_AFTER_READY_S, self._warm.refill, spec.pool)
        if entry.process is None:  # the pool never forked it
            failure = InitFailure(spec.key, "PoolError", "the warm pool could not fork an instance", at=time.time())
            self._emit(InstanceEvent(EventKind.INIT_FAILED, spec.instance_id, spec.key, failure=failure))
            self._cleanup(entry)
            self._emit(InstanceEvent(EventKind.EXITED, spec.instance_id, spec.key, requested=entry.stop_requested))
            return
        if line is not None and line.get("event") == "ready":
            entry.ready = True
            claimed = spec.instance_id in self._claimed
            self._claimed.pop(spec.instance_id, None)
            address = InstanceAddress(
                spec.instance_id,
                spec.key,
                entry.socket_path,
                spec.concurrency,
                start_phases=_with_code_phases(_phases(entry, line, claimed=claimed), line),
            )
            self._emit(InstanceEvent(EventKind.READY, spec.instance_id, spec.key, address=address))
        elif not entry.stop_requested:
            failure = self._failure(entry, line)
            self._emit(InstanceEvent(EventKind.INIT_FAILED, spec.instance_id, spec.key, failure=failure))
        code = await entry.process.wait()
        self._cleanup(entry)
        self._emit(
            InstanceEvent(EventKind.EXITED, spec.instance_id, spec.key, exit_code=code, requested=entry.stop_requested)
        )

    def _cleanup(self, entry: _Process) -> None:
        entry.exited.set()
        self._processes.pop(entry.spec.instance_id, None)
        self._claimed.pop(entry.spec.instance_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.socket_path)
        shutil.rmtree(entry.workdir, ignore_errors=True)
        if entry.cgroup is not None:
            Cgroups.remove(entry.cgroup)

    async def _read_status(
        self, entry: _Process, reader: asyncio.StreamReader, transport: asyncio.BaseTransport
    ) -> dict[str, object] | None:
        """The runtime's status line (after the pool's `forked` line, for a forked instance); None if the
        instance exits or hangs before it says anything."""
        try:
            async with asyncio.timeout(self._config.start_timeout_s):
                line = await _next_line(reader)
                if entry.process is None:
                    if line is None or line.get("event") != "forked":
                        return None
                    entry.forked_at = time.monotonic()
                    marks = line.get("marks")
                    entry.fork_marks = marks if isinstance(marks, dict) else {}
                    entry.process = ForkedProcess(int(str(line["pid"])))
                    self._confine(entry, entry.process.pid)
                    if entry.stop_requested:
                        _kill(entry.process)
                    line = await _next_line(reader)
                return line
        except TimeoutError:
            _kill(entry.process)
            entry.timed_out = True
            return None
        finally:
            transport.close()

    def _failure(self, entry: _Process, line: dict[str, object] | None) -> InitFailure:
        key = entry.spec.key
        if line is not None and line.get("event") == "init_failed":
            return InitFailure(
                key,
                str(line.get("error_type", "InitError")),
                str(line.get("detail", "")),
                at=time.time(),
                traceback=str(line.get("traceback", "")),
            )
        if entry.timed_out:
            detail = f"the instance did not become ready within {self._config.start_timeout_s:g}s; see `nest logs`"
            return InitFailure(key, "StartTimeout", detail, at=time.time())
        code = entry.process.returncode if entry.process is not None else None
        detail = f"the instance exited (code {code}) before it became ready; see `nest logs {key.function}`"
        return InitFailure(key, "InstanceCrashed", detail, at=time.time())

    def _emit(self, event: InstanceEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("handling %s of %s failed", event.kind, event.instance_id)

    async def stop(self, instance_id: InstanceId, *, grace_s: float) -> None:
        entry = self._processes.get(instance_id)
        if entry is None:
            return
        entry.stop_requested = True
        if entry.process is not None:
            with contextlib.suppress(ProcessLookupError):
                entry.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await entry.exited.wait()
        except TimeoutError:
            _kill(entry.process)
            await entry.exited.wait()

    async def stop_all(self, *, grace_s: float) -> None:
        await asyncio.gather(*(self.stop(i, grace_s=grace_s) for i in list(self._processes)))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.health_interval_s)
            ready = [entry for entry in self._processes.values() if entry.ready and not entry.stop_requested]
            await asyncio.gather(*(self._ping(entry) for entry in ready))

    async def _ping(self, entry: _Process) -> None:
        healthy = await health_check(entry.socket_path, timeout_s=self._config.health_timeout_s)
        if healthy:
            entry.failed_pings = 0
            return
        entry.failed_pings += 1
        alive = entry.process is not None and entry.process.returncode is None
        if entry.failed_pings >= self._config.health_failures and alive:
            spec = entry.spec
            self._emit(InstanceEvent(EventKind.UNHEALTHY, spec.instance_id, spec.key, detail="liveness ping failed"))
            entry.stop_requested = True
            _kill(entry.process)


def _phases(entry: _Process, ready: dict[str, object], *, claimed: bool) -> tuple[tuple[str, float], ...]:
    """How the start went, in milliseconds. An idle pool instance: `claim` (to the runtime's start) and `init`
    (the runtime's start-up, user imports included). Forked on demand: `fork` (request to a running child, as
    the zygote measured it), `boot`, `init`. A fresh interpreter: `spawn` (exec and imports) and `init`."""
    total_ms = (time.monotonic() - entry.started_at) * 1000
    init_ms = float(str(ready.get("init_ms", 0.0)))
    if claimed:
        return (("claim", round(max(0.0, total_ms - init_ms), 2)), ("init", round(init_ms, 2)))
    fork_ms = float(entry.fork_marks.get("running", 0.0))
    if fork_ms:
        boot_ms = max(0.0, total_ms - init_ms - fork_ms)
        return (("fork", round(fork_ms, 2)), ("boot", round(boot_ms, 2)), ("init", round(init_ms, 2)))
    return (("spawn", round(max(0.0, total_ms - init_ms), 2)), ("init", round(init_ms, 2)))


def _with_code_phases(phases: tuple[tuple[str, float], ...], ready: dict[str, object]) -> tuple[tuple[str, float], ...]:
    """Split the runtime's `init` into `fetch` and `unpack` of the code package (when this start did them; a start
    that found the package in the node cache reports neither) and the rest of `init`."""
    code = [(name, float(str(ready.get(f"{name}_ms", 0.0)))) for name in ("fetch", "unpack")]
    code = [(name, round(ms, 2)) for name, ms in code if ms > 0]
    if not code:
        return phases
    spent = sum(ms for _, ms in code)
    result: list[tuple[str, float]] = []
    for name, ms in phases:
        result += [*code, (name, round(max(0.0, ms - spent), 2))] if name == "init" else [(name, ms)]
    return tuple(result)


async def _next_line(reader: asyncio.StreamReader) -> dict[str, object] | None:
    try:
        raw = await reader.readline()
        line = json.loads(raw) if raw else None
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def _kill(process: ForkedProcess | None) -> None:
    """SIGKILL the instance's whole process group (it runs in its own session)."""
    if process is not None and process.returncode is None:
        kill_group(process.pid)


class SpawnedProcess(ForkedProcess):
    """A fresh interpreter (`pool: none`) started by `spawn_fresh`: waited for like a forked instance (pidfd),
    and its `subprocess.Popen` told the exit code, so that it has nothing left to reap or warn about."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(popen.pid)
        self._popen = popen

    def _reap(self) -> None:
        super()._reap()
        self._popen.returncode = self.returncode


async def spawn_fresh(argv: list[str], claim: Claim, status_fd: int, log_fd: int) -> SpawnedProcess:
    """Start a fresh interpreter off the event loop. uvloop's spawn forks this whole process on the loop (page
    tables, at-fork handlers): 9-14 ms measured with a stall detector, during which no request moved. In a worker
    thread, `subprocess` uses vfork and releases the GIL while the child execs."""
    popen = await asyncio.to_thread(
        subprocess.Popen,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
        pass_fds=(status_fd,),
        cwd=claim.cwd,
        env=claim.env,
        start_new_session=True,
    )
    return SpawnedProcess(popen)


HEALTH_REQUEST = b"GET /__nest__/health HTTP/1.1\r\nhost: instance\r\nconnection: close\r\n\r\n"


async def health_check(socket_path: str, *, timeout_s: float) -> bool:
    """One liveness ping over the instance's Unix socket: a 200 status line in time.

    A bare request on a fresh connection rather than an HTTP client: pings run for every instance every few
    seconds, and building a client (with its TLS context) per ping cost a third of the platform's thread.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(HEALTH_REQUEST)
            status_line = await reader.readline()
        return status_line.split(b" ", 2)[1:2] == [b"200"]
    except (OSError, TimeoutError, IndexError):
        return False
    finally:
        if writer is not None:
            writer.close()
