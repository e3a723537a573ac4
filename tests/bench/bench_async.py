"""bench_async: a no-op function run asynchronously, Nest's queue against Celery 5 with a Redis broker.

Both sides run the same work in the same run on the same machine:

- Nest: a real `nest up` per queue backend, the embedded SQLite queue (group commit, submissions fsynced) and
  NATS JetStream (`--queue nats://...`, skipped with `--nats ''`), a no-op function on one warm instance, tasks
  submitted as `POST /async-function/noop` over keep-alive HTTP connections from `--clients` concurrent clients
  (a raw asyncio HTTP/1.1 client, so the client's own cost stays small).
- Celery 5 (`redis://127.0.0.1:6379`, broker and result backend), a worker started here as a subprocess, the
  same no-op task submitted with `apply_async` from `--clients` threads. The worker pool is measured both as
  prefork (`-c 2`, one process per core) and threads (`-c 16`); the faster one is the baseline.

Throughput (`*_tps`) is end to end: `--tasks` tasks from the first submission until the last one is stored as
done, everything submitted at once (a backlog forms). Queue wait is measured from the client's send to the
function's first line (the payload carries the send time, the function returns its start time), both while
backlogged (the throughput run) and not backlogged (`--idle` tasks sent one at a time, 5 ms apart); Nest's own
`queued_s` (stored enqueue to lease) is reported beside it. Targets (issue 5): Nest >= 4x Celery's throughput
(stretch 7x), queue-wait p50 <= 5 ms when not backlogged. Prints one JSON line.

Run: .venv/bin/python -m tests.bench.bench_async [--tasks 5000] [--clients 32] [--rounds 3] [--nats URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gateway.asyncq.jetstream.queue import JetStreamTaskQueue
from tests.integration.conftest import start_platform, stop_platform

if TYPE_CHECKING:
    from collections.abc import Callable

NOOP = """
import json, time

def handle(request):
    started = time.time()
    return {"sent": request.json()["sent"], "started": started}
"""
NOOP_MANIFEST = "scaling: {min: 1, max: 1}\nconcurrency: 100\nasync: {concurrency: 64}\n"
CELERY_APP = """
import time
from celery import Celery

app = Celery("bench", broker="redis://127.0.0.1:6379/14", backend="redis://127.0.0.1:6379/15")
app.conf.update(worker_prefetch_multiplier=16, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

@app.task(name="noop")
def noop(sent):
    return {"sent": sent, "started": time.time()}
"""
CELERY_POOLS = {"prefork": ("--pool", "prefork", "-c", "2"), "threads": ("--pool", "threads", "-c", "16")}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": -1.0, "p99_ms": -1.0}
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2),
    }


# Nest


class Submitter(asyncio.Protocol):
    """One keep-alive connection POSTing to `path` (a fresh `body(n)` each, n counting down) until `left` is 0.

    `statuses` counts the answers; `retry_after` collects the Retry-After values of refusals."""

    def __init__(
        self,
        left: list[int],
        done: asyncio.Future[int],
        *,
        path: str = "/async-function/noop",
        body: Callable[[int], bytes] = lambda _: json.dumps({"sent": time.time()}).encode(),
        statuses: Counter[int] | None = None,
        call_ids: list[str] | None = None,
    ) -> None:
        self.left, self.done, self.path, self.body = left, done, path, body
        self.call_ids = call_ids
        self.statuses: Counter[int] = Counter() if statuses is None else statuses
        self.retry_after: list[str] = []
        self.buffer = bytearray()
        self.refused = 0
        self.transport: asyncio.Transport | None = None

    def send(self) -> None:
        assert self.transport is not None
        if self.left[0] <= 0:
            self.transport.close()
            return
        self.left[0] -= 1
        body = self.body(self.left[0])
        head = f"POST {self.path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        self.transport.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head_end = self.buffer.index(b"\r\n\r\n") + 4
            head = bytes(self.buffer[:head_end]).lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(self.buffer) < head_end + length:
                return
            if self.call_ids is not None and head[9:12] == b"202":
                self.call_ids.append(json.loads(bytes(self.buffer[head_end : head_end + length]))["call_id"])
            del self.buffer[: head_end + length]
            self.statuses[int(head[9:12])] += 1
            if head[9:12] != b"202":
                self.refused += 1
                if b"retry-after:" in head:
                    self.retry_after.append(head.split(b"retry-after:", 1)[1].split(b"\r\n", 1)[0].strip().decode())
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.refused)


async def _submit_all(port: int, tasks: int, clients: int, call_ids: list[str] | None) -> int:
    loop = asyncio.get_running_loop()
    left = [tasks]
    futures = [loop.create_future() for _ in range(clients)]
    for future in futures:
        await loop.create_connection(lambda f=future: Submitter(left, f, call_ids=call_ids), "127.0.0.1", port)
    return sum(await asyncio.gather(*futures))


def _api_rows(url: str, call_ids: list[str], timeout_s: float) -> list[tuple[Any, ...]]:
    """The same rows as `_nest_rows`, from `GET /api/v1/invocations/{id}` (any queue backend), once all are final."""
    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as http:
        for call_id in call_ids:
            while True:
                view = http.get(f"/api/v1/invocations/{call_id}").json()
                if view["status"] not in {"queued", "delayed", "running"}:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"invocation {call_id} did not finish within {timeout_s:.0f}s: {view}")
                time.sleep(0.05)
            result = view.get("result", "").encode()
            rows.append((None, view["status"], view["enqueued_at"], view["started_at"], view["finished_at"], result))
    return rows


def _nest_rows(db_path: Path, since_seq: int) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT seq, status, enqueued_at, first_started_at, finished_at, result FROM tasks WHERE seq > ?",
            (since_seq,),
        ).fetchall()


def _nest_wait_done(db_path: Path, since_seq: int, count: int, timeout_s: float) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            (done,) = db.execute(
                "SELECT count(*) FROM tasks WHERE seq > ? AND status NOT IN ('queued', 'delayed', 'running')",
                (since_seq,),
            ).fetchone()
        if done >= count:
            return _nest_rows(db_path, since_seq)
        time.sleep(0.05)
    raise RuntimeError(f"only {done} of {count} Nest tasks finished within {timeout_s:.0f}s")


def _last_seq(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM tasks").fetchone()
    return int(seq)


def _nest_figures(rows: list[tuple[Any, ...]], first_send: float) -> dict[str, Any]:
    bad = [row for row in rows if row[1] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} Nest tasks did not succeed, e.g. {bad[0][:5]}")
    waits, queued = [], []
    for _, _, enqueued_at, first_started_at, _, result in rows:
        answer = json.loads(result)
        waits.append(answer["started"] - answer["sent"])
        queued.append(first_started_at - enqueued_at)
    last = max(row[4] for row in rows)
    return {
        "tps": round(len(rows) / (last - first_send), 1),
        "wait": percentiles(waits),
        "queued_s": percentiles(queued),
    }


class Nest:
    """A real `nest up` (`--queue` URL, or the embedded SQLite queue) with the no-op function on one warm instance.

    With SQLite the figures are read from `tasks.db` (read-only); with another backend from the invocations API.
    """

    def __init__(self, root: Path, queue: str | None = None) -> None:
        name = "nats" if queue else "sqlite"
        extra = ("--health-interval", "5", *(("--queue", queue) if queue else ()))
        self.platform = start_platform(root / name / "data", root / name / "work", extra=extra)
        platform = self.platform
        platform.deploy("noop", NOOP, NOOP_MANIFEST)
        platform.wait_for(
            lambda: any(i["state"] == "ready" for i in platform.describe("noop")["instances"]),  # type: ignore[union-attr]
            what="a warm instance",
        )
        self.port = int(platform.url.rsplit(":", 1)[1])
        self.queue = queue
        self.db_path = None if queue else platform.data_dir / "tasks.db"
        self.throughput(500, 16)  # warm-up

    def throughput(self, tasks: int, clients: int) -> dict[str, Any]:
        since = _last_seq(self.db_path) if self.db_path else 0
        call_ids: list[str] | None = None if self.db_path else []
        first_send = time.time()
        refused = asyncio.run(_submit_all(self.port, tasks, clients, call_ids))
        if refused:
            raise RuntimeError(f"{refused} submissions were not accepted")
        return _nest_figures(self._rows(since, tasks, call_ids, timeout_s=300), first_send)

    def idle(self, tasks: int) -> dict[str, Any]:
        """One at a time, 5 ms apart: nothing is backlogged."""
        since = _last_seq(self.db_path) if self.db_path else 0
        call_ids = []
        first_send = time.time()
        with httpx.Client(base_url=self.platform.url) as http:
            for _ in range(tasks):
                response = http.post("/async-function/noop", json={"sent": time.time()})
                if response.status_code != 202:
                    raise RuntimeError(f"submission answered {response.status_code}: {response.text}")
                call_ids.append(response.json()["call_id"])
                time.sleep(0.005)
        figures = _nest_figures(self._rows(since, tasks, call_ids, timeout_s=60), first_send)
        return {"wait": figures["wait"], "queued_s": figures["queued_s"]}

    def _rows(self, since: int, tasks: int, call_ids: list[str] | None, timeout_s: float) -> list[tuple[Any, ...]]:
        if self.db_path is not None:
            return _nest_wait_done(self.db_path, since, tasks, timeout_s=timeout_s)
        assert call_ids is not None
        return _api_rows(self.platform.url, call_ids, timeout_s)

    def close(self) -> None:
        stop_platform(self.platform)
        if self.queue:
            asyncio.run(_destroy(self.queue))


async def _destroy(url: str) -> None:
    """Delete the bench's own streams and buckets (its prefix is unique to the run), leaving the server as found."""
    queue = JetStreamTaskQueue.from_url(url)
    await queue.open()
    try:
        await queue.destroy()
    finally:
        await queue.close()


# Celery


def start_celery_worker(root: Path, name: str) -> subprocess.Popen[bytes]:
    """A worker of the pool `name`, consuming only the queue of that name."""
    (root / "celery_noop.py").write_text(textwrap.dedent(CELERY_APP))
    log = (root / f"celery-{name}.log").open("wb")
    command = [sys.executable, "-m", "celery", "-A", "celery_noop", "worker", "--loglevel", "warning"]
    command += [*CELERY_POOLS[name], "-Q", name, "-n", f"bench-{name}@%h"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    return process


def _celery_app(root: Path) -> Any:
    sys.path.insert(0, str(root))
    import celery_noop  # type: ignore[import-not-found]

    return celery_noop


def _redis(db: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, db=db)


def _celery_ready(module: Any, queue: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            module.noop.apply_async((time.time(),), queue=queue).get(timeout=2)
            return
        except Exception:  # the worker is still starting
            time.sleep(0.2)
    raise RuntimeError("the Celery worker did not answer")


def _celery_submit(module: Any, queue: str, tasks: int, clients: int, timed: bool) -> None:
    per_client = [tasks // clients + (1 if index < tasks % clients else 0) for index in range(clients)]

    def client(count: int) -> None:
        for _ in range(count):
            module.noop.apply_async((time.time(),), queue=queue)
            if timed:
                time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(count,)) for count in per_client]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _celery_collect(count: int, timeout_s: float) -> list[dict[str, Any]]:
    backend = _redis(15)
    deadline = time.monotonic() + timeout_s
    while backend.dbsize() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {backend.dbsize()} of {count} Celery tasks finished within {timeout_s:.0f}s")
        time.sleep(0.05)
    keys = list(backend.scan_iter("celery-task-meta-*", count=1000))
    return [json.loads(raw) for raw in backend.mget(keys)]


def celery_run(module: Any, queue: str, tasks: int, clients: int, *, idle: bool) -> dict[str, Any]:
    _redis(15).flushdb()
    first_send = time.time()
    _celery_submit(module, queue, tasks, 1 if idle else clients, timed=idle)
    metas = _celery_collect(tasks, timeout_s=300)
    if any(meta["status"] != "SUCCESS" for meta in metas):
        raise RuntimeError("a Celery task failed")
    waits = [meta["result"]["started"] - meta["result"]["sent"] for meta in metas]
    last = max(datetime.fromisoformat(meta["date_done"]).timestamp() for meta in metas)
    return {"tps": round(tasks / (last - first_send), 1), "wait": percentiles(waits)}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


Rounds = dict[str, list[dict[str, Any]]]


def run_all(root: Path, args: argparse.Namespace) -> tuple[Rounds, Rounds]:
    """Rounds interleaved (each Nest backend, then each Celery pool), so the machine's noise hits every side alike."""
    _redis(14).flushdb()
    workers = {name: start_celery_worker(root, name) for name in CELERY_POOLS}
    nests: dict[str, Nest] = {}
    try:
        module = _celery_app(root)
        for name in CELERY_POOLS:
            _celery_ready(module, name)
        nests["sqlite"] = Nest(root)
        if args.nats:
            nests["nats"] = Nest(root, f"{args.nats.rstrip('/')}/BENCH{os.getpid()}")
        nest_rounds: Rounds = {name: [] for name in nests}
        celery_rounds: Rounds = {name: [] for name in CELERY_POOLS}
        for _ in range(args.rounds):
            for name, nest in nests.items():
                nest_rounds[name].append(nest.throughput(args.tasks, args.clients))
            for name in CELERY_POOLS:
                celery_rounds[name].append(celery_run(module, name, args.tasks, args.clients, idle=False))
        for name, nest in nests.items():
            nest_rounds[name][0]["idle"] = nest.idle(args.idle)
        for name in CELERY_POOLS:
            celery_rounds[name][0]["idle"] = celery_run(module, name, args.idle, 1, idle=True)
        return nest_rounds, celery_rounds
    finally:
        for nest in nests.values():
            nest.close()
        for worker in workers.values():
            stop(worker)


def median_of(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for entry in rounds:
        value: Any = entry
        for key in path:
            value = value[key]
        values.append(float(value))
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=300, help="tasks sent one at a time for the unloaded wait")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="JetStream for the NATS backend ('' skips)")
    args = parser.parse_args()
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        nests, celery = run_all(root, args)
    celery_tps = {name: median_of(rounds, "tps") for name, rounds in celery.items()}
    best = max(celery_tps, key=lambda name: celery_tps[name])
    figures: dict[str, Any] = {"bench": "async", "tasks": args.tasks, "clients": args.clients, "rounds": args.rounds}
    for name, rounds in nests.items():
        figures[f"{name}_tps"] = median_of(rounds, "tps")
        figures[f"{name}_tps_rounds"] = [entry["tps"] for entry in rounds]
        figures[f"{name}_idle_wait_p50_ms"] = rounds[0]["idle"]["wait"]["p50_ms"]
        figures[f"{name}_idle_wait_p99_ms"] = rounds[0]["idle"]["wait"]["p99_ms"]
        figures[f"{name}_idle_queued_s_p50_ms"] = rounds[0]["idle"]["queued_s"]["p50_ms"]
        figures[f"{name}_idle_queued_s_p99_ms"] = rounds[0]["idle"]["queued_s"]["p99_ms"]
        figures[f"{name}_backlog_wait_p50_ms"] = median_of(rounds, "wait", "p50_ms")
        figures[f"{name}_backlog_wait_p99_ms"] = median_of(rounds, "wait", "p99_ms")
    for name in nests:
        figures[f"ratio_{name}_vs_celery"] = round(figures[f"{name}_tps"] / median_of(celery[best], "tps"), 2)
    print(
        json.dumps(
            figures
            | {
                "celery_pool": best,
                "celery_tps": celery_tps[best],
                "celery_tps_by_pool": celery_tps,
                "celery_idle_wait_p50_ms": celery[best][0]["idle"]["wait"]["p50_ms"],
                "celery_idle_wait_p99_ms": celery[best][0]["idle"]["wait"]["p99_ms"],
                "celery_backlog_wait_p50_ms": median_of(celery[best], "wait", "p50_ms"),
                "celery_backlog_wait_p99_ms": median_of(celery[best], "wait", "p99_ms"),
            }
        )
    )


if __name__ == "__main__":
    main()
