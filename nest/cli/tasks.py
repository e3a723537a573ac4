"""`nest tasks`, `nest async` and `nest dlq`: follow, cancel, pause and re-drive async invocations.

```
nest tasks ls [--function NAME] [--status queued]     recent invocations, newest first
nest tasks show CALL_ID                               status, attempts, timings, result or error
nest tasks cancel CALL_ID                             cancel a queued or delayed invocation
nest async pause|resume NAME                          stop / restart dispatching NAME's tasks
nest async clear NAME                                 cancel every waiting task of NAME (batch delete)
nest dlq ls [--function NAME] | show ID | redrive ID | purge [--function NAME]
```
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from nest.cli.output import err, out
from nest.client import DEFAULT_URL, ClientError, NestClient

tasks_app = typer.Typer(no_args_is_help=True, help="Follow and cancel async invocations.")
async_app = typer.Typer(no_args_is_help=True, help="Pause, resume or clear a function's async queue.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-lettered invocations: list, show, redrive, purge.")


UrlOption = Annotated[str | None, typer.Option("--url", help="Nest's URL (default: $NEST_URL or " + DEFAULT_URL + ")")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]
FunctionOption = Annotated[str | None, typer.Option("--function", "-f", help="Only this function")]


def _client(url: str | None) -> NestClient:
    return NestClient(url or os.environ.get("NEST_URL", DEFAULT_URL))


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True)
    raise typer.Exit(1)


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _table(items: list[dict[str, Any]]) -> None:
    table = Table("CALL ID", "FUNCTION", "STATUS", "ATTEMPTS", "ENQUEUED", "QUEUED", "RUNNING", "ERROR", box=None)
    for item in items:
        table.add_row(
            item["call_id"],
            item["function"],
            item["status"],
            str(item["attempts"]),
            _when(item["enqueued_at"]),
            f"{item['queued_s']:.3f}s",
            f"{item['running_s']:.3f}s",
            (item.get("error") or "")[:60],
        )
    out.print(table)


def _show(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(item)
        return
    for key in ("call_id", "function", "status", "priority", "attempts", "throttles", "error"):
        out.print(f"{key:>12}: {item.get(key)}")
    for key in ("enqueued_at", "not_before", "started_at", "finished_at"):
        out.print(f"{key:>12}: {_when(item.get(key))}")
    out.print(f"{'queued':>12}: {item['queued_s']:.3f}s   running: {item['running_s']:.3f}s")
    if "result" in item:
        truncated = " (truncated)" if item.get("result_truncated") else ""
        out.print(f"{'result':>12}: HTTP {item.get('result_status')}{truncated}")
        out.print(item["result"])


@tasks_app.command("ls")
def list_tasks(
    function: FunctionOption = None,
    status: Annotated[str | None, typer.Option(help="queued, delayed, running, succeeded, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Recent async invocations, newest first."""
    try:
        items = _client(url).invocations(function=function, status=status, limit=limit)
    except ClientError as exc:
        _fail(str(exc))
    _print_json(items) if as_json else _table(items)


@tasks_app.command("show")
def show_task(call_id: str, as_json: JsonOption = False, url: UrlOption = None) -> None:
    """One invocation: status, attempts, timings, result or error."""
    try:
        _show(_client(url).invocation(call_id), as_json)
    except ClientError as exc:
        _fail(str(exc))


@tasks_app.command("cancel")
def cancel_task(call_id: str, url: UrlOption = None) -> None:
    """Cancel a queued or delayed invocation."""
    try:
        item = _client(url).cancel_invocation(call_id)
    except ClientError as exc:
        _fail(str(exc))
    out.print(f"{item['call_id']} {item['status']}")


@async_app.command("pause")
def pause(name: str, url: UrlOption = None) -> None:
    """Stop dispatching NAME's async tasks; they stay queued."""
    _control(name, "pause", url, "paused: tasks stay queued until 'nest async resume'")


@async_app.command("resume")
def resume(name: str, url: UrlOption = None) -> None:
    """Dispatch NAME's async tasks again."""
    _control(name, "resume", url, "resumed")


@async_app.command("clear")
def clear(name: str, url: UrlOption = None) -> None:
    """Cancel every queued or delayed task of NAME (batch delete)."""
    _control(name, "tasks", url, "")


def _control(name: str, action: str, url: str | None, message: str) -> None:
    try:
        result = _client(url).async_control(name, action)
    except ClientError as exc:
        _fail(str(exc))
    out.print(f"{name}: {message or str(result.get('cancelled', 0)) + ' waiting tasks cancelled'}")


@dlq_app.command("ls")
def list_dead(function: FunctionOption = None, as_json: JsonOption = False, url: UrlOption = None) -> None:
    """Dead-lettered invocations, newest first (expired ones: nest tasks ls --status expired)."""
    try:
        items = _client(url).invocations(function=function, status="dead_lettered", limit=1000)
    except ClientError as exc:
        _fail(str(exc))
    _print_json(items) if as_json else _table(items)


@dlq_app.command("show")
def show_dead(call_id: str, as_json: JsonOption = False, url: UrlOption = None) -> None:
    """One dead-lettered invocation with its last error and answer."""
    show_task(call_id, as_json, url)


@dlq_app.command("redrive")
def redrive(call_id: str, url: UrlOption = None) -> None:
    """Queue a dead-lettered or expired invocation again with fresh attempts."""
    try:
        item = _client(url).redrive(call_id)
    except ClientError as exc:
        _fail(str(exc))
    out.print(f"{item['call_id']} {item['status']}")


@dlq_app.command("purge")
def purge(function: FunctionOption = None, url: UrlOption = None) -> None:
    """Delete dead-lettered and expired invocations (of one function, or all)."""
    try:
        result = _client(url).purge_dead(function)
    except ClientError as exc:
        _fail(str(exc))
    out.print(f"{result['purged']} purged")
