"""bench_usage: what reading every instance's CPU and memory costs the platform per autoscaler tick.

Starts N idle Python processes (`--instances`, default 10 and 50) shaped like instances (an interpreter with a
few imports), then times `UsageMeter.measure` over all of them, the way the local backend calls it once a tick,
for each memory source: `/proc` PSS (`smaps_rollup`, the no-cgroup fallback) read for every instance (a first
tick) and rationed (`PSS_READS_PER_TICK` re-reads, the steady state), `/proc` RSS (`statm`, what PSS was chosen
over) and, where this machine lets us create memory cgroups, the cgroup's working set. The variants
are interleaved round by round and the medians reported (the machine is shared). Also times the thread hop
(`asyncio.to_thread`) the backend pays to keep the reads off the event loop. Prints one JSON line.

Run: .venv/bin/python -m tests.bench.bench_usage [--instances 10 50] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from controller.backends import usage
from controller.backends.cgroups import Cgroups, detect, remove_tree
from controller.backends.usage import Target, UsageMeter
from nest.contracts.ids import FunctionName, VersionId
from nest.contracts.model import VersionKey

if TYPE_CHECKING:
    from pathlib import Path

KEY = VersionKey(FunctionName("bench"), VersionId("v1"))
CHILD = "import json, asyncio, concurrent.futures, time\ntime.sleep(3600)\n"


def rss_tick_ms(targets: list[Target]) -> float:
    """What a meter reading RSS (`statm`) instead of PSS would cost: CPU and memory per instance, no rationing."""
    started = time.perf_counter()
    for target in targets:
        usage.proc_cpu_s(target.pid)
        with open(f"/proc/{target.pid}/statm", "rb") as file:
            file.read()
    return (time.perf_counter() - started) * 1000


def timed_ms(meter: UsageMeter, targets: list[Target], cgroups: Cgroups | None) -> float:
    started = time.perf_counter()
    meter.measure(targets, cgroups)
    return (time.perf_counter() - started) * 1000


async def hop_ms(rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await asyncio.to_thread(lambda: None)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(count: int, rounds: int, cgroups: Cgroups | None) -> dict[str, float]:
    children = [subprocess.Popen([sys.executable, "-c", CHILD]) for _ in range(count)]
    groups: list[Path] = []
    try:
        time.sleep(1.0)  # let the imports finish
        plain = [Target(f"i{n}", KEY, child.pid, None) for n, child in enumerate(children)]
        variants: dict[str, tuple[list[Target], Cgroups | None, UsageMeter | None]] = {
            "pss_every_instance": (plain, None, UsageMeter(pss_reads_per_tick=count)),
            "pss_rationed": (plain, None, UsageMeter()),
            "rss": (plain, None, None),
        }
        if cgroups is not None:
            for n, child in enumerate(children):
                group = cgroups.place(f"bench-{n}", child.pid, 1024**3)
                if group is not None:
                    groups.append(group)
            if len(groups) == count:
                grouped = [Target(f"i{n}", KEY, child.pid, groups[n]) for n, child in enumerate(children)]
                variants["cgroup"] = (grouped, cgroups, UsageMeter())
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (targets, groups_in_use, meter) in variants.items():
                spent = rss_tick_ms(targets) if meter is None else timed_ms(meter, targets, groups_in_use)
                times[name].append(spent)
        result = {f"{name}_ms_per_tick": round(statistics.median(values), 3) for name, values in times.items()}
        result |= {f"{name}_us_per_instance": round(1000 * result[f"{name}_ms_per_tick"] / count, 1) for name in times}
        return {"instances": count, **result}
    finally:
        for child in children:
            child.kill()
            child.wait()
        for group in groups:
            Cgroups.remove(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    cgroups = detect(owner=os.getpid())
    try:
        results = [run(count, args.rounds, cgroups) for count in args.instances]
    finally:
        if cgroups is not None:
            remove_tree(cgroups.base)
    hop = asyncio.run(hop_ms(200))
    kind = "none" if cgroups is None else ("v2" if cgroups.unified else "v1")
    print(json.dumps({"cgroups": kind, "to_thread_hop_ms": round(hop, 3), "runs": results}))


if __name__ == "__main__":
    main()
