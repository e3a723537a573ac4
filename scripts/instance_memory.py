"""Unique memory of pool instances, idle and claimed, measured from outside: a quick loop for density work.

bench_density runs a whole `nest up` (~40 s, and its median mixes first and later starts). This starts a zygote
as `runtime/zygote.py` prepares one (preloads, `settle` with its warm-up, `gc.freeze`), forks `--instances` idle
instances as the zygote does (detach steps, rehearsal), then either leaves them idle or claims each with a real
package through `runtime.zygote._specialize` (the archive layout, bytecode sidecar written by the first run),
sends each a few requests, and reads every instance's USS (Private_Clean + Private_Dirty of
/proc/PID/smaps_rollup) from this process, so that the measuring touches none of their pages. ~10 s a run;
the figures agree with bench_density's within ~0.1 MiB. Prints one JSON line.

    .venv/bin/python scripts/instance_memory.py [--idle] [--instances 3] [--requests 5]

Used to find what a claim costs by step (docs/operations.md, Density): change the runtime, run this a few times
alternating with `git stash`, compare medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_density import uss_kib  # noqa: E402

PROBE = "import os\n\n\ndef handle(request):\n    return {'pid': os.getpid()}\n"

ZYGOTE = """
import gc; gc.disable()
import ctypes, importlib, json, os, random, sys
from controller.warmpool import DEFAULT_PRELOAD
from runtime import zygote
from runtime.rehearsal import rehearse, settle

code_dir, digest, count, idle, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
for module in DEFAULT_PRELOAD:
    importlib.import_module(module)
sys.dont_write_bytecode = True
scratch = os.path.join(run, "scratch")
os.mkdir(scratch)
settle(scratch, warm_up=zygote._warm_up)
gc.freeze()
pids = []
for index in range(count):
    status = os.open(f"{run}/status{index}", os.O_WRONLY | os.O_CREAT, 0o600)
    log = os.open(f"{run}/log{index}", os.O_WRONLY | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:  # what `_become_idle` does, minus the wait for re-parenting
        os.setsid(); gc.enable(); zygote._reset_signals(); random.seed()
        zygote.set_process_name("nest-idle")
        rehearse(scratch)
        if idle:
            os.write(status, b'{"event": "ready"}\\n')
            ctypes.CDLL(None).pause()
            os._exit(0)
        work = f"{run}/work{index}"
        os.mkdir(work)
        argv = [
            "--socket", f"{run}/i{index}.sock", "--code-dir", code_dir, "--package", digest,
            "--code-url", "file:///nonexistent", "--function", "probe", "--version", "v", "--instance", f"i{index}",
            "--timeout", "30", "--concurrency", "1", "--memory-bytes", str(256 * 1024**2), "--no-memory-rlimit",
        ]
        claim = {"argv": argv, "env": {"PATH": "/usr/bin:/bin", "NEST_FUNCTION": "probe", "HOME": work}, "cwd": work}
        os._exit(zygote._specialize(claim, status, log))
    os.close(status); os.close(log)
    pids.append(pid)
with open(f"{run}/pids", "w") as file:
    file.write(json.dumps(pids))
ctypes.CDLL(None).pause()
"""


def package(root: Path) -> tuple[Path, str]:
    """The probe as an archive package in a node cache under `root` (what a claimed instance loads)."""
    from nest.cli.packaging import build_chunked
    from nest.contracts.chunks import Codec, Layout
    from runtime.unpack import cache_dir_for, ensure_package
    from tests.fakes.chunk_source import FakeChunkSource

    source = root / "function"
    source.mkdir()
    (source / "nest.yaml").write_text("name: probe\n")
    (source / "main.py").write_text(PROBE)
    built = build_chunked(source, codec=Codec.ZSTD, layout=Layout.ARCHIVE)
    target = cache_dir_for(root / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    return target, built.manifest.digest


def request(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        client.sendall(b"GET /function/probe HTTP/1.1\r\nhost: probe\r\nx-nest-invocation-id: probe\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += client.recv(65536)


def measure(code_dir: Path, digest: str, *, count: int, idle: bool, requests: int, run: Path) -> list[int]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"}
    arguments = [str(code_dir), digest, str(count), "1" if idle else "0", str(run)]
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, *arguments], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (run / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = json.loads((run / "pids").read_text())
        while time.monotonic() < deadline and not all(
            "ready" in (run / f"status{index}").read_text() for index in range(count)
        ):
            time.sleep(0.05)
        for index in range(0 if idle else count):
            for _ in range(requests):
                request(str(run / f"i{index}.sock"))
        time.sleep(0.5)
        return [uss_kib(pid) for pid in pids]
    finally:
        for pid in json.loads((run / "pids").read_text()) if (run / "pids").exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        zygote.kill()
        zygote.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--idle", action="store_true", help="leave the instances unclaimed")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nest-memory-") as directory:
        root = Path(directory)
        code_dir, digest = package(root)
        first = root / "first"
        first.mkdir()
        # a first claim writes the package's bytecode sidecar, as the first instance on a node does
        measure(code_dir, digest, count=1, idle=False, requests=1, run=first)
        run = root / "run"
        run.mkdir()
        found = measure(code_dir, digest, count=args.instances, idle=args.idle, requests=args.requests, run=run)
    print(
        json.dumps(
            {
                "instances": "idle" if args.idle else "claimed",
                "uss_kib": found,
                "median_mib": round(statistics.median(found) / 1024, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
