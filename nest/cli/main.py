"""The `nest` command: parse, call the HTTP client, print. Errors are one line on stderr and exit code 1.

```
nest up                      run the platform in the foreground (embedded default)
nest init hello              scaffold hello/nest.yaml and hello/main.py
nest deploy hello            validate, package, upload; prints the URL and version
nest invoke hello --data '{"name": "x"}'
nest ls | describe NAME | logs NAME [-f] | delete NAME     (read verbs take -o json)
nest schema                  the JSON Schema of nest.yaml
nest invoke hello --async [--id KEY] [--delay 30s] [--priority 5]     queue it; prints the call id
nest tasks ls|show|cancel ; nest async pause|resume|clear NAME ; nest dlq ls|show|redrive|purge
nest scale simulate --trace FILE [--policy nest|kpa|keepalive-10m|static-N]   replay a trace locally
```
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from nest.cli.output import err, out, when
from nest.cli.packaging import BuiltPackage, PackagingError, build_for_deploy
from nest.cli.pools import pools
from nest.cli.scale import scale_app, schedules_table
from nest.cli.tasks import async_app, dlq_app, tasks_app
from nest.cli.templates import HANDLERS, render
from nest.cli.upload import UploadReport, upload_package
from nest.client import DEFAULT_URL, ClientError, NestClient
from nest.contracts.errors import InvalidInput
from nest.contracts.manifest import (
    NAME_PATTERN,
    ManifestError,
    json_schema,
    parse_manifest,
    parse_size,
    validate_name,
)
from nest.contracts.pools import PoolSettings, PoolsFileError, parse_pools

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nest: deploy Python functions, run them on demand.")
app.add_typer(scale_app, name="scale")
app.add_typer(tasks_app, name="tasks")
app.command("pools")(pools)
app.add_typer(async_app, name="async")
app.add_typer(dlq_app, name="dlq")

PROGRESS_OVER_BYTES = 1024**2


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
UrlOption = Annotated[str | None, typer.Option("--url", help="Nest's URL (default: $NEST_URL or " + DEFAULT_URL + ")")]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True)
    raise typer.Exit(1)


def client_for(url: str | None) -> NestClient:
    return NestClient(url or os.environ.get("NEST_URL", DEFAULT_URL))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    data_dir: Annotated[Path | None, typer.Option(help="State directory (default: $NEST_DATA_DIR or ~/.nest)")] = None,
    health_interval: Annotated[float, typer.Option(help="Seconds between liveness pings of each instance")] = 5.0,
    activation_timeout: Annotated[float, typer.Option(help="Seconds a request may wait for an instance")] = 30.0,
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", help="Declare a warm pool: NAME=module,module (repeatable); functions say pool: NAME"),
    ] = None,
    pools_file: Annotated[
        Path | None,
        typer.Option("--pools", help="Warm pools file (YAML: preloads, min/max idle, idle TTL); SIGHUP reloads it"),
    ] = None,
    metrics_grpc: Annotated[
        str | None,
        typer.Option(
            "--metrics-grpc",
            metavar="HOST:PORT",
            help="Also serve the gateway's traffic over gRPC (nest.metrics.v1) for remote autoscalers; off by default",
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="NEST_WEBHOOK_SECRET",
            help="Standard Webhooks secret (whsec_...) signing async callbacks and webhooks (default: made once in"
            " the data directory)",
        ),
    ] = None,
    allow_private_webhooks: Annotated[
        bool, typer.Option(help="Let webhooks and callbacks reach loopback and private addresses (SSRF guard off)")
    ] = False,
    nats_url: Annotated[str, typer.Option(help="NATS server for nats: destinations")] = "nats://127.0.0.1:4222",
    lease_margin: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds an async task's lease outlasts its function's timeout (a crash's tasks rerun then)"
        ),
    ] = 30.0,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            metavar="nats://HOST:PORT[/PREFIX]",
            help="Keep async tasks in NATS JetStream (gateways given the same URL share them; streams and buckets"
            " are named PREFIX_..., default NEST) instead of the embedded SQLite queue",
        ),
    ] = None,
    code_cache_size: Annotated[
        str,
        typer.Option(
            metavar="SIZE",
            help="Budget of the node's unpacked-package cache (e.g. 500Mi, 2Gi); least recently used packages no"
            " instance runs are evicted past it",
        ),
    ] = "2Gi",
) -> None:
    """Run gateway, autoscaler, controller and instances in the foreground. Ctrl-C drains and stops."""
    from nest.wiring.embedded import EmbeddedConfig, serve
    from nest.wiring.invocations import AsyncConfig

    directory = data_dir or Path(os.environ.get("NEST_DATA_DIR", "~/.nest"))
    pools = _declared_pools(pools_file, pool or [])
    if metrics_grpc is not None and not _is_listen_address(metrics_grpc):
        fail(f"--metrics-grpc {metrics_grpc!r}: expected HOST:PORT (e.g. 0.0.0.0:9090) or unix:PATH")
    try:
        code_cache_bytes = parse_size(code_cache_size)
    except ValueError as exc:
        fail(f"--code-cache-size: {exc}")
    if queue is not None and not queue.startswith(("nats://", "tls://")):
        fail(f"--queue {queue!r}: expected a NATS URL such as nats://127.0.0.1:4222 (JetStream enabled)")
    config = EmbeddedConfig(
        host=host,
        port=port,
        data_dir=directory,
        health_interval_s=health_interval,
        activation_timeout_s=activation_timeout,
        pools=pools,
        pools_file=pools_file.resolve() if pools_file is not None else None,
        metrics_grpc=metrics_grpc,
        code_cache_bytes=code_cache_bytes,
        async_config=AsyncConfig(
            webhook_secret, allow_private_webhooks, nats_url, lease_margin_s=lease_margin, queue_url=queue
        ),
    )
    try:
        serve(config)
    except InvalidInput as exc:  # e.g. --metrics-grpc on a port already taken
        fail(str(exc))


def _is_listen_address(address: str) -> bool:
    if address.startswith("unix:"):
        return len(address) > len("unix:")
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536


def _declared_pools(pools_file: Path | None, shorthand: list[str]) -> dict[str, PoolSettings]:
    """The pools file, then each `--pool NAME=mods` (a new pool with default sizes); refuses a bad one."""
    pools: dict[str, PoolSettings] = {}
    if pools_file is not None:
        try:
            pools = parse_pools(pools_file.read_bytes())
        except OSError as exc:
            fail(f"--pools {pools_file}: cannot read it ({exc.strerror})")
        except PoolsFileError as exc:
            fail(f"--pools {pools_file}: " + "; ".join(f"{f}: {m}" if f else m for f, m in exc.problems))
    for item in shorthand:
        name, sep, modules = item.partition("=")
        if not sep or not NAME_PATTERN.match(name) or name in {"default", "none"} or name in pools:
            fail(f"--pool {item!r}: expected NAME=module,module with a new pool name (e.g. science=numpy,pandas)")
        try:
            pools[name] = PoolSettings.model_validate({"preload": modules})
        except ValidationError as exc:
            fail(f"--pool {item!r}: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    return pools


@app.command()
def init(
    name: str,
    style: Annotated[str, typer.Option(help="native, asgi or lambda")] = "native",
    directory: Annotated[Path | None, typer.Option("--dir", help="Parent directory (default: here)")] = None,
) -> None:
    """Scaffold NAME/ with nest.yaml and main.py."""
    try:
        validate_name(name)
    except InvalidInput as exc:
        fail(str(exc))
    if style not in HANDLERS:
        fail(f"--style {style!r} is not one of {', '.join(HANDLERS)}")
    target = (directory or Path.cwd()) / name
    if target.exists() and any(target.iterdir()):
        fail(f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    for file, content in render(name, style).items():
        (target / file).write_text(content)
    out.print(f"created {target}/nest.yaml and main.py; deploy with: nest deploy {target}")


def _upload(client: NestClient, name: str, package: BuiltPackage) -> tuple[dict[str, Any], UploadReport]:
    """Only the chunks the store lacks, then the manifest (`nest/cli/upload.py`); a bar when that is a lot."""
    columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(f"uploading {name}", total=None, visible=False)

        def planned(total: int) -> None:
            progress.update(task, total=total, completed=0, visible=total > PROGRESS_OVER_BYTES)

        return upload_package(client, name, package, advance=lambda n: progress.advance(task, n), planned=planned)


@app.command()
def deploy(
    directory: Annotated[Path, typer.Argument(help="The function directory")] = Path(), url: UrlOption = None
) -> None:
    """Validate nest.yaml, package the directory and deploy it as a new version."""
    manifest_path = directory / "nest.yaml"
    if not manifest_path.is_file():
        fail(f"{manifest_path}: not found (create one with `nest init NAME`)")
    try:
        manifest = parse_manifest(manifest_path.read_bytes())
        package = build_for_deploy(directory)
    except ManifestError as exc:
        fail("nest.yaml: " + "; ".join(f"{f}: {m}" if f else m for f, m in exc.problems))
    except PackagingError as exc:
        fail(str(exc))
    client = client_for(url)
    try:
        result, report = _upload(client, manifest.name, package)
    except ClientError as exc:
        fail(str(exc))
    state = "new" if result.get("created") else "unchanged"
    out.print(f"deployed {result['name']} version {result['version']} ({state})")
    if isinstance(stored := result.get("package"), dict):
        new_chunks, new_bytes = stored["new_chunks"], stored["new_bytes"]
        if report.incremental:  # sent one by one before the manifest: the store saw them as new then
            new_chunks, new_bytes = report.sent_chunks, report.sent_chunk_bytes
        out.print(f"package: {stored['chunks']} chunks, {new_chunks} new ({new_bytes} B stored)")
    out.print(report.line())
    out.print(f"url: {result['url']}")


def _read_data(data: str | None) -> bytes:
    if data is None:
        return b""
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        path = Path(data[1:])
        if not path.is_file():
            fail(f"{path}: no such file")
        return path.read_bytes()
    return data.encode()


@app.command()
def invoke(
    name: str,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Body: JSON text, @file or - for stdin")] = None,
    method: Annotated[str, typer.Option("--method", "-X")] = "POST",
    path: Annotated[str, typer.Option(help="Sub-path after /function/NAME")] = "",
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="K:V, repeatable")] = None,
    include: Annotated[bool, typer.Option("--include", "-i", help="Print status and headers")] = False,
    run_async: Annotated[
        bool, typer.Option("--async", help="Queue it; print the call id (nest tasks show ID)")
    ] = False,
    call_key: Annotated[str | None, typer.Option("--id", help="Idempotency key for --async")] = None,
    delay: Annotated[str | None, typer.Option(help="With --async: run no earlier than this, e.g. 30s")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="With --async: 0 (default) to 9")] = None,
    url: UrlOption = None,
) -> None:
    """Call a function over HTTP and print its answer (or, with --async, queue it and print its call id)."""
    headers: dict[str, str] = {}
    for item in header or []:
        key, sep, value = item.partition(":")
        if not sep:
            fail(f"--header {item!r} is not K:V")
        headers[key.strip()] = value.strip()
    if run_async:
        extra = {"Idempotency-Key": call_key, "X-Nest-Delay": delay, "X-Nest-Priority": priority}
        headers |= {key: str(value) for key, value in extra.items() if value is not None}
        try:
            print_json(
                client_for(url).invoke_async(
                    name, method=method.upper(), path=path, body=_read_data(data), headers=headers
                )
            )
        except ClientError as exc:
            fail(str(exc))
        return
    if call_key or delay or priority is not None:
        fail("--id, --delay and --priority only apply with --async")
    try:
        response = client_for(url).invoke(
            name, method=method.upper(), path=path, body=_read_data(data), headers=headers
        )
    except ClientError as exc:
        fail(str(exc))
    if include:
        sys.stdout.write(f"HTTP {response.status_code}\n")
        for key, value in response.headers.items():
            sys.stdout.write(f"{key}: {value}\n")
        sys.stdout.write("\n")
    if response.status_code >= 400:
        try:
            reason = response.json().get("reason", response.text)
        except ValueError:
            reason = response.text
        fail(f"{reason} ({response.status_code})")
    sys.stdout.write(response.text + ("" if response.text.endswith("\n") else "\n"))


@app.command("ls")
def list_functions(output: OutputOption = Output.TABLE, url: UrlOption = None) -> None:
    """List functions."""
    try:
        functions = client_for(url).list_functions()
    except ClientError as exc:
        fail(str(exc))
    if output is Output.JSON:
        print_json({"functions": functions})
        return
    table = Table("NAME", "VERSION", "READY", "STARTING", "URL", box=None)
    for item in functions:
        table.add_row(item["name"], item["version"], str(item["ready"]), str(item["starting"]), item["url"])
    out.print(table)


@app.command()
def describe(name: str, output: OutputOption = Output.TABLE, url: UrlOption = None) -> None:
    """Show a function: configuration, instances, scaling decisions, last init error, versions."""
    try:
        info = client_for(url).describe(name)
    except ClientError as exc:
        fail(str(exc))
    if output is Output.JSON:
        print_json(info)
        return
    manifest = info.get("manifest") or {}
    scaling = manifest.get("scaling", {})
    out.print(f"[bold]{info['name']}[/bold]  version {info['version']}  {info['url']}")
    out.print(
        f"handler {manifest.get('handler')} ({manifest.get('handler_style')})  timeout {manifest.get('timeout')}s"
        f"  memory {int(manifest.get('memory', 0)) // 1024**2}Mi  concurrency {manifest.get('concurrency')}"
    )
    out.print(
        f"scaling min {scaling.get('min')} max {scaling.get('max')} utilization {scaling.get('utilization')}"
        f"  scale_down_delay {scaling.get('scale_down_delay')}s"
        f"  scale_to_zero_grace {scaling.get('scale_to_zero_grace')}s"
        f"  desired {info['scaling']['desired']}  mode {info['scaling'].get('mode', 'stable')}"
    )
    usage = info["scaling"].get("usage") or {}
    if usage.get("cpu_cores") is not None or usage.get("memory_bytes") is not None:
        cpu = "-" if usage["cpu_cores"] is None else f"{usage['cpu_cores']:.2f} cores"
        memory = "-" if usage["memory_bytes"] is None else f"{usage['memory_bytes'] / 1024**2:.0f}Mi"
        out.print(f"usage cpu {cpu}  memory {memory}  ({usage['instances']} ready instance(s), last autoscaler tick)")
    if scaling.get("schedules"):
        out.print(schedules_table(scaling["schedules"], time.time()))
    error = info.get("last_init_error")
    if error:
        out.print(f"[red]last init error[/red] {when(error['at'])}: {error['error_type']}: {error['detail']}")
    instances = Table("INSTANCE", "VERSION", "STATE", "STARTED", box=None, title="instances", title_justify="left")
    for item in info["instances"]:
        instances.add_row(item["id"], item["version"], item["state"], when(item["started_at"]))
    out.print(instances)
    decisions = Table("AT", "DESIRED", "MODE", "REASON", box=None, title="scaling decisions", title_justify="left")
    for item in info["scaling"]["decisions"]:
        decisions.add_row(when(item["at"]), str(item["desired"]), item.get("mode", "stable"), item["reason"])
    out.print(decisions)
    starts = Table("AT", "INSTANCE", "PHASES (ms)", box=None, title="recent instance starts", title_justify="left")
    for item in info.get("cold_starts", [])[:5]:
        phases = "  ".join(f"{name} {ms:.1f}" for name, ms in item["phases_ms"].items())
        starts.add_row(when(item["at"]), item["instance"], phases)
    out.print(starts)
    versions = Table("VERSION", "CREATED", "CODE", box=None, title="versions", title_justify="left")
    for item in info["versions"]:
        versions.add_row(item["version"], when(item["created_at"]), item["code_digest"][:12])
    out.print(versions)


def format_log(record: dict[str, Any]) -> str:
    """`2026-11-22T10:00:00.123 [a1b2] [c3d4e5f6] message`."""
    ts = record.get("ts")
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] if ts else "-"
    instance = str(record.get("instance") or "-")[-4:]
    invocation = str(record.get("invocation_id") or "-")[-8:]
    marker = {"stderr": " !", "system": " *"}.get(str(record.get("stream")), "")
    return f"{stamp} [{instance}] [{invocation}]{marker} {record.get('message', '')}"


@app.command()
def logs(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
    tail: Annotated[int, typer.Option(help="Lines from the end")] = 100,
    output: OutputOption = Output.TABLE,
    url: UrlOption = None,
) -> None:
    """Print a function's logs (stdout, stderr and platform events), each line with its invocation id."""
    try:
        for record in client_for(url).logs(name, tail=tail, follow=follow):
            line = json.dumps(record) if output is Output.JSON else format_log(record)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except ClientError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    url: UrlOption = None,
) -> None:
    """Delete a function: its routes go at once, its instances drain and stop."""
    if not yes and not typer.confirm(f"delete function {name}?"):
        raise typer.Exit(1)
    try:
        client_for(url).delete(name)
    except ClientError as exc:
        fail(str(exc))
    out.print(f"deleted {name}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of nest.yaml (for editors)."""
    print_json(json_schema())


@app.command()
def version() -> None:
    """Print Nest's version."""
    from importlib.metadata import version as package_version

    out.print(package_version("nest-faas"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
