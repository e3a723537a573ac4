"""bench_backlog: 100,000 async tasks submitted at once drain at the function's concurrency, none lost, memory bounded.

Through a real `nest up` (SQLite queue): the function is paused, `--tasks` tasks are submitted over keep-alive HTTP
from `--clients` connections (the backlog forms at once), then `--extra` more, which must be refused with 429 and a
Retry-After once the backlog reached `async.max_backlog` (set to `--tasks`). The function is resumed and the backlog
drains. The function logs each run (its key, its start and end, and how many runs its instance had at once) to a
file; `nest up`'s resident memory (its own process) is sampled throughout.

Checked: every accepted task succeeded and ran exactly once (no loss, no duplicate), the function never ran more
than `async.concurrency` at once and reached it, memory stayed bounded. Reported: submission and drain rates, the
average concurrency while draining (time spent in the function / drain time), RSS at start and peak. Prints one
JSON line; exits non-zero if a check fails.

Run: .venv/bin/python -m tests.bench.bench_backlog [--tasks 100000] [--concurrency 8] [--work-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.bench.bench_async import Submitter
from tests.integration.conftest import start_platform, stop_platform

COUNTER = """
import os
import threading
import time

LOG = os.environ["RUN_LOG"]
WORK_S = float(os.environ["WORK_S"])
lock = threading.Lock()
running = 0


def handle(request):
    global running
    with lock:
        running += 1
        at_once = running
    started = time.time()
    time.sleep(WORK_S)
    ended = time.time()
    with lock:
        running -= 1
    line = f"{request.json()['k']} {started:.6f} {ended:.6f} {at_once}\\n"
    descriptor = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    return "ok"
"""
RSS_LIMIT_MB = 300.0
"""Peak resident memory of `nest up` above its start that fails the run: the backlog lives on disk, not in memory."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.samples.append(rss_mb(self.pid))
            except OSError:
                return


async def submit(port: int, count: int, clients: int, *, first_key: int) -> tuple[Counter[int], list[str]]:
    loop = asyncio.get_running_loop()
    left = [count]
    statuses: Counter[int] = Counter()
    futures = [loop.create_future() for _ in range(clients)]
    submitters = []
    for future in futures:

        def make(f: asyncio.Future[int] = future) -> Submitter:
            submitter = Submitter(
                left,
                f,
                path="/async-function/counter",
                body=lambda n: json.dumps({"k": first_key + n}).encode(),
                statuses=statuses,
            )
            submitters.append(submitter)
            return submitter

        await loop.create_connection(make, "127.0.0.1", port)
    await asyncio.gather(*futures)
    return statuses, [value for submitter in submitters for value in submitter.retry_after]


def count_done(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    waiting = sum(rows.get(status, 0) for status in ("queued", "delayed", "running"))
    return rows.get("succeeded", 0), waiting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--extra", type=int, default=500, help="submissions past max_backlog (must get 429)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--work-ms", type=float, default=5.0)
    args = parser.parse_args()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        log = root / "runs.log"
        platform = start_platform(root / "data", root / "work", extra=("--health-interval", "5"))
        sampler = RssSampler(platform.process.pid)
        try:
            manifest = (
                f"env: {{RUN_LOG: {log}, WORK_S: '{args.work_ms / 1000}'}}\nscaling: {{min: 1, max: 1}}\n"
                f"concurrency: {args.concurrency * 2}\n"
                f"async: {{concurrency: {args.concurrency}, max_backlog: {args.tasks}}}\n"
            )
            platform.deploy("counter", COUNTER, manifest)
            platform.cli("async", "pause", "counter")
            rss_start = rss_mb(platform.process.pid)
            sampler.start()
            port = int(platform.url.rsplit(":", 1)[1])
            started = time.monotonic()
            statuses, _ = asyncio.run(submit(port, args.tasks, args.clients, first_key=0))
            submit_s = time.monotonic() - started
            time.sleep(0.5)  # the API's backlog count may be 0.25 s stale
            extra, retry_after = asyncio.run(submit(port, args.extra, 4, first_key=args.tasks))
            accepted = statuses[202] + extra[202]
            if statuses[202] != args.tasks:
                failures.append(f"{args.tasks - statuses[202]} of the first {args.tasks} were refused: {statuses}")
            if extra[429] < args.extra * 0.9 or not retry_after:
                failures.append(f"past max_backlog: {dict(extra)} (Retry-After seen {len(retry_after)} times)")
            resumed = time.time()
            platform.cli("async", "resume", "counter")
            db_path = platform.data_dir / "tasks.db"
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                done, waiting = count_done(db_path)
                if not waiting:
                    break
                time.sleep(1.0)
            done, waiting = count_done(db_path)
        finally:
            sampler.stopped.set()
            stop_platform(platform)
        runs = [line.split() for line in log.read_text().splitlines()]
    keys = Counter(int(run[0]) for run in runs)
    twice = sum(1 for count in keys.values() if count > 1)
    if done != accepted or waiting:
        failures.append(f"{accepted} accepted, {done} succeeded, {waiting} still waiting")
    if len(keys) != accepted or twice:
        failures.append(f"{len(keys)} distinct tasks ran ({twice} more than once) of {accepted} accepted")
    most_at_once = max(int(run[3]) for run in runs)
    if most_at_once > args.concurrency:
        failures.append(f"the function ran {most_at_once} at once, above async.concurrency {args.concurrency}")
    first_start = min(float(run[1]) for run in runs)
    last_end = max(float(run[2]) for run in runs)
    busy = sum(float(run[2]) - float(run[1]) for run in runs)
    rss_peak = max(sampler.samples, default=rss_start)
    if rss_peak - rss_start > RSS_LIMIT_MB:
        failures.append(f"nest up grew from {rss_start:.0f} MB to {rss_peak:.0f} MB")
    print(
        json.dumps(
            {
                "bench": "backlog",
                "tasks": args.tasks,
                "accepted": accepted,
                "succeeded": done,
                "ran_twice": twice,
                "refused_past_backlog": extra[429],
                "retry_after_s": retry_after[0] if retry_after else None,
                "submit_tps": round(args.tasks / submit_s, 1),
                "drain_s": round(last_end - resumed, 1),
                "drain_tps": round(accepted / (last_end - resumed), 1),
                "concurrency": args.concurrency,
                "most_at_once": most_at_once,
                "mean_concurrency": round(busy / (last_end - first_start), 2),
                "ideal_drain_tps": round(args.concurrency / (args.work_ms / 1000), 1),
                "rss_start_mb": round(rss_start, 1),
                "rss_peak_mb": round(rss_peak, 1),
                "ok": not failures,
                "failures": failures,
            }
        )
    )
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    main()
