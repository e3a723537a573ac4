"""`nest pools`: the warm pools of a running Nest, read from its Prometheus metrics.

```
nest pools            POOL  IDLE  TARGET  CLAIMS  MISSES  REFILLS  RECYCLED  RESTARTS  GEN  PRELOAD
nest pools -o json
```
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from nest.cli.output import err, out
from nest.client import DEFAULT_URL, ClientError, NestClient

COLUMNS = {
    "nest_pool_idle_instances": "idle",
    "nest_pool_idle_target": "target",
    "nest_pool_claims": "claims",
    "nest_pool_misses": "misses",
    "nest_pool_refills": "refills",
    "nest_pool_recycled": "recycled",
    "nest_pool_zygote_restarts": "zygote_restarts",
}


def parse_pool_metrics(text: str) -> list[dict[str, Any]]:
    """One row per pool from the `nest_pool_*` families of a Prometheus text page."""
    pools: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.labels.get("pool")
            if name is None or not family.name.startswith("nest_pool_") or sample.name.endswith("_created"):
                continue
            row = pools.setdefault(name, {"pool": name})
            if family.name == "nest_pool_info":
                row["preload"] = [m for m in sample.labels.get("preload", "").split(",") if m]
                row["generation"] = int(sample.labels.get("generation", "0"))
            elif family.name in COLUMNS:
                row[COLUMNS[family.name]] = int(sample.value)
    return sorted(pools.values(), key=lambda row: (row["pool"] != "default", row["pool"]))


def pools(
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    url: Annotated[str | None, typer.Option("--url", help="Nest's URL (default: $NEST_URL)")] = None,
) -> None:
    """Show the warm pools: idle instances and their target, claims, misses, refills, recycling, zygote restarts."""
    client = NestClient(url or os.environ.get("NEST_URL", DEFAULT_URL))
    try:
        rows = parse_pool_metrics(client.metrics())
    except ClientError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        raise typer.Exit(1) from None
    if output == "json":
        sys.stdout.write(json.dumps({"pools": rows}, indent=2) + "\n")
        return
    if not rows:
        out.print("no warm pools (nest up runs them unless the platform cannot adopt forked processes)")
        return
    headers = ("POOL", "IDLE", "TARGET", "CLAIMS", "MISSES", "REFILLS", "RECYCLED", "RESTARTS", "GEN", "PRELOAD")
    table = Table(*headers, box=None)
    keys = ("idle", "target", "claims", "misses", "refills", "recycled", "zygote_restarts", "generation")
    for row in rows:
        table.add_row(row["pool"], *(str(row.get(key, "-")) for key in keys), ",".join(row.get("preload", [])))
    out.print(table)
