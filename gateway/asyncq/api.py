"""The async invocation API: submit (OpenFaaS's `/async-function/...`), follow, cancel, pause, dead letters.

`POST /async-function/{name}[/{path}]` answers `202` with the call id (`X-Call-Id` and the JSON body) only once
the task is durably stored; an unknown function is a 404 and a body over `async.max_body` a 413 before anything
is stored; a backlog at `async.max_backlog` a 429 with `Retry-After`. Headers a caller may send:
`Idempotency-Key` (same key and payload: the first invocation, not a second run; other payload: 409),
`X-Nest-Delay` (`"30s"`, `"5m"` or seconds: run no earlier), `X-Nest-Priority` (0-9, default 0),
`X-Callback-Url` (the result is POSTed there).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.asyncq.crashpoints import crashpoint
from gateway.asyncq.dispatcher import AsyncSettings
from gateway.asyncq.fairness import PRIORITY_MAX, PRIORITY_MIN
from gateway.asyncq.retry import RetryPolicy
from gateway.asyncq.tasks import NewTask, Submitted, Task, TaskAdmin, TaskQueue, TaskStatus
from gateway.errors import send_error
from gateway.proxy import ClientDisconnected, read_body
from nest.contracts.errors import InvalidInput, NestError, NotFound, PayloadTooLarge, TooManyRequests
from nest.contracts.manifest import parse_duration, validate_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send

    from nest.contracts.model import AsyncSpec, Route as FunctionRoute

ASYNC_PREFIX = "/async-function/"
IDEMPOTENCY_KEY_MAX = 256
URL_MAX = 2048
DELAY_MAX_S = 7 * 86400.0
LIST_MAX = 1000
BACKLOG_CACHE_S = 0.25
"""How stale the backlog count behind the 429 decision may be: counting on every submission would cost more
than the submission itself once the backlog is deep."""


class TaskStore(TaskQueue, TaskAdmin, Protocol):
    """A queue backend that also answers the administrative calls (both SQLite and JetStream do)."""

    async def backlog(self, function: str) -> int: ...

    async def purge_dead(self, function: str | None) -> int: ...


class RouteCatalog:
    """Async settings read from the gateway's live routes (the function's `nest.yaml` `async:`)."""

    def __init__(self, routes: Mapping[str, FunctionRoute]) -> None:
        self._routes = routes

    def route(self, function: str) -> FunctionRoute | None:
        return self._routes.get(function)

    def async_spec(self, function: str) -> AsyncSpec | None:
        route = self._routes.get(function)
        return route.async_spec if route is not None else None

    def async_settings(self, function: str) -> AsyncSettings | None:
        route = self._routes.get(function)
        if route is None:
            return None
        spec = route.async_spec
        return AsyncSettings(
            concurrency=spec.concurrency,
            timeout_s=route.timeout_s,
            retry=RetryPolicy(max_retries=spec.max_retries, max_event_age_s=spec.max_event_age_s),
            max_backlog=spec.max_backlog,
        )


class AsyncApi:
    def __init__(
        self,
        store: TaskStore,
        catalog: RouteCatalog,
        *,
        wake: Callable[[], None],
        deliveries: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.wake = wake
        self.deliveries = deliveries
        self.clock = clock
        self.monotonic = monotonic
        self._backlogs: dict[str, tuple[float, int]] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/async-function/{name}", self.submit, methods=["POST", "PUT", "PATCH", "GET", "DELETE"]),
            Route("/async-function/{name}/{path:path}", self.submit, methods=["POST", "PUT", "PATCH", "GET", "DELETE"]),
            Route("/api/v1/invocations", self.list_invocations, methods=["GET"]),
            Route("/api/v1/invocations/{id}", self.show, methods=["GET"]),
            Route("/api/v1/invocations/{id}", self.cancel, methods=["DELETE"]),
            Route("/api/v1/invocations/{id}/redrive", self.redrive, methods=["POST"]),
            Route("/api/v1/functions/{name}/async/pause", self.pause, methods=["POST"]),
            Route("/api/v1/functions/{name}/async/resume", self.resume, methods=["POST"]),
            Route("/api/v1/functions/{name}/async/tasks", self.cancel_waiting, methods=["DELETE"]),
            Route("/api/v1/dlq", self.purge_dead, methods=["DELETE"]),
        ]

    async def submit(self, request: Request) -> Response:
        """
        summary: Invoke a function asynchronously; 202 with the call id once the task is durably stored.
        responses:
          202: {description: "{call_id, function, status, created}"}
          404: {description: no such function}
          409: {description: Idempotency-Key reused with another payload}
          413: {description: body over async.max_body}
          429: {description: backlog over async.max_backlog; Retry-After says when to try again}
        """
        name = validate_name(request.path_params["name"])
        route = self.catalog.route(name)
        if route is None:
            raise NotFound("function", name)
        body = await _read_bounded(request, route.async_spec.max_body_bytes)
        submitted = await self.enqueue(
            name,
            body,
            method=request.method,
            path="/" + request.path_params.get("path", ""),
            query=request.url.query,
            headers=request.headers,
        )
        task = submitted.task
        answer = {"call_id": task.id, "function": name, "status": task.status.value, "created": submitted.created}
        if not submitted.created and task.status is TaskStatus.SUCCEEDED:
            answer["result"] = _result_text(task)
        return JSONResponse(answer, status_code=202, headers={"x-call-id": task.id})

    async def enqueue(
        self, name: str, body: bytes, *, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> Submitted:
        """Validate the async headers, apply backpressure, store the task durably, wake the dispatcher.

        `headers` are looked up lower-case (Starlette's `Headers` or a plain dict of lower-case names).
        """
        route = self.catalog.route(name)
        if route is None:
            raise NotFound("function", name)
        if len(body) > route.async_spec.max_body_bytes:
            raise PayloadTooLarge("async request body", route.async_spec.max_body_bytes)
        key = _idempotency_key(headers.get("idempotency-key"))
        delay_s = _delay(headers.get("x-nest-delay"))
        priority = _priority(headers.get("x-nest-priority"))
        callback = _callback_url(headers.get("x-callback-url"))
        await self._check_backlog(name, route.async_spec.max_backlog)
        now = self.clock()
        described = {"method": method, "path": path}
        if query:
            described["query"] = query
        if "content-type" in headers:
            described["content_type"] = headers["content-type"]
        new = NewTask(
            function=name,
            payload=body,
            payload_digest=hashlib.sha256(body).hexdigest(),
            enqueued_at=now,
            not_before=now + delay_s,
            priority=priority,
            idempotency_key=key,
            request=described,
            callback_url=callback,
        )
        submitted = await self.store.submit(new)
        crashpoint("after_persist")
        if submitted.created:
            self.wake()
        return submitted

    async def asgi_submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`submit` as plain ASGI for the gateway's fast path: same checks, same answers, no Starlette routing."""
        rest = scope["path"][len(ASYNC_PREFIX) :]
        name, slash, subpath = rest.partition("/")
        try:
            validate_name(name)
            route = self.catalog.route(name)
            if route is None:
                raise NotFound("function", name)
            body = await read_body(scope, receive, route.async_spec.max_body_bytes)
            headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
            submitted = await self.enqueue(
                name,
                body,
                method=scope["method"],
                path="/" + subpath if slash else "/",
                query=scope["query_string"].decode("latin-1"),
                headers=headers,
            )
        except NestError as error:
            await send_error(send, error, function=name or None)
            return
        except ClientDisconnected:
            return
        task = submitted.task
        answer: dict[str, Any] = {
            "call_id": task.id,
            "function": name,
            "status": task.status.value,
            "created": submitted.created,
        }
        if not submitted.created and task.status is TaskStatus.SUCCEEDED:
            answer["result"] = _result_text(task)
        payload = json.dumps(answer).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-call-id", task.id.encode()),
        ]
        await send({"type": "http.response.start", "status": 202, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _check_backlog(self, function: str, limit: int) -> None:
        now = self.monotonic()
        cached = self._backlogs.get(function)
        if cached is None or now - cached[0] > BACKLOG_CACHE_S:
            cached = (now, await self.store.backlog(function))
            self._backlogs[function] = cached
        if cached[1] >= limit:
            raise TooManyRequests(
                f"function {function!r} has {cached[1]} async tasks waiting (async.max_backlog {limit}); retry later",
                retry_after_s=5.0,
            )
        self._backlogs[function] = (cached[0], cached[1] + 1)

    async def show(self, request: Request) -> Response:
        """
        summary: An invocation's status, attempts, timings, and its result or error.
        responses:
          200: {description: the invocation}
          404: {description: no such invocation}
        """
        task = await self.store.get(request.path_params["id"])
        if task is None:
            raise NotFound("invocation", request.path_params["id"])
        view = task_view(task, now=self.clock())
        if self.deliveries is not None:
            view["deliveries"] = await self.deliveries(task.id)
        return JSONResponse(view)

    async def cancel(self, request: Request) -> Response:
        """
        summary: Cancel a queued or delayed invocation.
        responses:
          200: {description: the cancelled invocation}
          404: {description: no such invocation}
          409: {description: it is running or already ended}
        """
        task = await self.store.cancel(request.path_params["id"], now=self.clock())
        return JSONResponse(task_view(task, now=self.clock()))

    async def redrive(self, request: Request) -> Response:
        """
        summary: Queue a dead-lettered or expired invocation again, with fresh attempts.
        responses:
          200: {description: the queued invocation}
          409: {description: it is not dead-lettered or expired}
        """
        task = await self.store.redrive(request.path_params["id"], now=self.clock())
        self.wake()
        return JSONResponse(task_view(task, now=self.clock()))

    async def list_invocations(self, request: Request) -> Response:
        """
        summary: Recent invocations, newest first; filter with ?function=NAME&status=STATUS&limit=N.
        responses:
          200: {description: "{invocations: [...]}"}
        """
        function = request.query_params.get("function")
        if function is not None:
            validate_name(function)
        status = _status(request.query_params.get("status"))
        limit = _limit(request.query_params.get("limit"))
        tasks = await self.store.list_tasks(function=function, status=status, limit=limit)
        now = self.clock()
        return JSONResponse({"invocations": [task_view(task, now=now, with_result=False) for task in tasks]})

    async def pause(self, request: Request) -> Response:
        """
        summary: Stop dispatching the function's async tasks (they stay queued).
        responses:
          200: {description: "{function, paused: true}"}
        """
        name = self._known(request)
        await self.store.set_paused(name, True)
        return JSONResponse({"function": name, "paused": True})

    async def resume(self, request: Request) -> Response:
        """
        summary: Dispatch the function's async tasks again.
        responses:
          200: {description: "{function, paused: false}"}
        """
        name = self._known(request)
        await self.store.set_paused(name, False)
        self.wake()
        return JSONResponse({"function": name, "paused": False})

    async def cancel_waiting(self, request: Request) -> Response:
        """
        summary: Batch delete, cancelling every queued or delayed task of the function.
        responses:
          200: {description: "{function, cancelled: N}"}
        """
        name = validate_name(request.path_params["name"])
        count = await self.store.cancel_waiting(name, now=self.clock())
        self._backlogs.pop(name, None)
        return JSONResponse({"function": name, "cancelled": count})

    async def purge_dead(self, request: Request) -> Response:
        """
        summary: Delete dead-lettered and expired invocations (of ?function=NAME, or all).
        responses:
          200: {description: "{purged: N}"}
        """
        function = request.query_params.get("function")
        if function is not None:
            validate_name(function)
        return JSONResponse({"purged": await self.store.purge_dead(function)})

    def _known(self, request: Request) -> str:
        name = validate_name(request.path_params["name"])
        if self.catalog.route(name) is None:
            raise NotFound("function", name)
        return name


def task_view(task: Task, *, now: float, with_result: bool = True) -> dict[str, Any]:
    """The JSON an invocation is shown as (`GET /api/v1/invocations/{id}`, `nest tasks show`)."""
    status = task.status
    if status is TaskStatus.DELAYED and task.not_before <= now:
        status = TaskStatus.QUEUED
    view: dict[str, Any] = {
        "call_id": task.id,
        "function": task.function,
        "status": status.value,
        "priority": task.priority,
        "attempts": task.attempts,
        "throttles": task.throttles,
        "enqueued_at": task.enqueued_at,
        "not_before": task.not_before,
        "started_at": task.first_started_at,
        "finished_at": task.finished_at,
        "queued_s": round(task.queued_s, 6),
        "running_s": round(task.running_s, 6),
        "idempotency_key": task.idempotency_key,
        "error": task.error,
    }
    if with_result and task.result is not None:
        view["result"] = _result_text(task)
        view["result_status"] = task.result_status
        view["result_truncated"] = task.result_truncated
    return view


def _result_text(task: Task) -> str:
    return (task.result or b"").decode("utf-8", errors="replace")


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("async request body", limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("async request body", limit)
        parts.append(chunk)
    return b"".join(parts)


def _idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not raw or len(raw) > IDEMPOTENCY_KEY_MAX or not raw.isprintable():
        raise InvalidInput("Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters")
    return raw


def _delay(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        delay = parse_duration(raw)
    except ValueError as exc:
        raise InvalidInput("X-Nest-Delay", str(exc)) from None
    if delay > DELAY_MAX_S:
        raise InvalidInput("X-Nest-Delay", f"{raw!r} is longer than the maximum of 7 days")
    return delay


def _priority(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.strip().isdigit() or not PRIORITY_MIN <= int(raw) <= PRIORITY_MAX:
        raise InvalidInput("X-Nest-Priority", f"{raw!r} is not a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}")
    return int(raw)


def _callback_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    if len(raw) > URL_MAX or not raw.startswith(("http://", "https://")):
        raise InvalidInput("X-Callback-Url", f"must be an http(s) URL of at most {URL_MAX} characters")
    return raw


def _status(raw: str | None) -> TaskStatus | None:
    if raw is None:
        return None
    try:
        return TaskStatus(raw)
    except ValueError:
        known = ", ".join(status.value for status in TaskStatus)
        raise InvalidInput("status", f"{raw!r} is not one of {known}") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_MAX:
        raise InvalidInput("limit", f"{raw!r} is not a whole number from 1 to {LIST_MAX}")
    return int(raw)
