"""The invocation server: one ASGI app that runs the function for each request, served by uvicorn on a Unix socket.

Per request: take the invocation id the gateway sent (or make one), set it as the log context, run the handler
(async on the loop, sync in a pool of `concurrency` threads, never blocking the loop), enforce the timeout, map
the result or the exception to a response, flush the invocation's partial log lines. A sync handler past its
timeout cannot be interrupted: the answer is 504 with `x-nest-recycle: 1` and the instance exits once the
others finish, to be replaced. A client (the gateway) that goes away cancels an async handler.

`GET /__nest__/health` answers the controller's liveness ping. Start-up and readiness are in `runtime/main.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import queue
import threading
import traceback
from typing import TYPE_CHECKING, Any

from runtime.handlers import lambda_, native
from runtime.loading import is_async
from runtime.logs import current_invocation

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime.config import RuntimeConfig
    from runtime.logs import LogSink

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any
Send = Any

HEALTH_PATH = "/__nest__/health"
BODY_MAX = 100 * 1024**2
WATCH_AFTER_S = 0.02


class Recycle(Exception):
    """The handler ran past its timeout in a thread that cannot be stopped."""


class InvocationApp:
    """The ASGI app of one instance."""

    def __init__(self, config: RuntimeConfig, handler: Any, sink: LogSink) -> None:
        self.config = config
        self.handler = handler
        self.sink = sink
        self.in_flight = 0
        self.recycling = False
        self.on_recycle: Callable[[], None] | None = None
        self._async = is_async(handler)
        self._threads = HandlerThreads(config.concurrency)
        self._ids = 0
        self._prefix = os.urandom(4).hex()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == HEALTH_PATH:
            await _send(send, 200, [native.JSON], json.dumps({"status": "ok", "in_flight": self.in_flight}).encode())
            return
        invocation_id = self._invocation_id(scope)
        token = current_invocation.set(invocation_id)
        self.in_flight += 1
        watch = _Watch(receive)
        try:
            if self.config.style == "asgi":
                await self._asgi(scope, receive, send, invocation_id)
            else:
                await self._call(scope, receive, send, invocation_id, watch)
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            self.sink.system("client went away; invocation cancelled", invocation_id)
        finally:
            watch.stop()
            self.in_flight -= 1
            self.sink.flush_invocation(invocation_id)
            current_invocation.reset(token)

    def _invocation_id(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"x-nest-invocation-id":
                return str(value.decode("latin-1"))
        self._ids += 1
        return f"{self._prefix}{self._ids:08x}"

    async def _call(self, scope: Scope, receive: Receive, send: Send, invocation_id: str, watch: _Watch) -> None:
        body = await _read_body(receive)
        watch.arm()
        extra = [(b"x-nest-invocation-id", invocation_id.encode())]
        try:
            if self.config.style == "lambda":
                direct = _has_header(scope, lambda_.DIRECT_HEADER)
                event = (
                    lambda_.direct_event(body)
                    if direct
                    else lambda_.build_event(scope, body, invocation_id=invocation_id)
                )
                context = lambda_.LambdaContext(
                    function_name=self.config.function,
                    function_version=self.config.version,
                    aws_request_id=invocation_id,
                    memory_limit_in_mb=self.config.memory_bytes // 1024**2,
                    deadline=asyncio.get_running_loop().time() + self.config.timeout_s,
                )
                result = await self._run(self.handler, event, context)
                status, headers, payload = lambda_.direct_response(result) if direct else lambda_.to_response(result)
            else:
                request = native.build_request(scope, body, invocation_id=invocation_id, function=self.config.function)
                result = await self._run(self.handler, request)
                status, headers, payload = native.to_response(result)
        except Recycle:
            await self._timed_out(send, invocation_id, recycle=True)
            return
        except TimeoutError:
            await self._timed_out(send, invocation_id, recycle=False)
            return
        except Exception as exc:
            await self._failed(send, invocation_id, exc)
            return
        watch.disarm()
        await _send(send, status, headers + extra, payload)

    async def _run(self, handler: Any, *args: Any) -> Any:
        """Run the handler under the timeout: on the loop if async, in the pool if sync."""
        if self._async:
            async with asyncio.timeout(self.config.timeout_s):
                return await handler(*args)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = self._threads.run(loop, context.run, handler, *args)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await future
        except TimeoutError:
            raise Recycle from None

    async def _asgi(self, scope: Scope, receive: Receive, send: Send, invocation_id: str) -> None:
        started = False
        header = (b"x-nest-invocation-id", invocation_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self.handler(scope, receive, send_with_id)
        except TimeoutError:
            if not started:
                await self._timed_out(send, invocation_id, recycle=False)
        except Exception as exc:
            if not started:
                await self._failed(send, invocation_id, exc)
            else:
                self.sink.system(traceback.format_exc(), invocation_id)

    async def _failed(self, send: Send, invocation_id: str, exc: Exception) -> None:
        self.sink.system(traceback.format_exc(), invocation_id)
        bad_return = isinstance(exc, native.BadReturn)
        body: dict[str, Any] = {
            "error": "bad_return" if bad_return else "function_error",
            "reason": str(exc),
            "type": type(exc).__name__,
            "invocation_id": invocation_id,
        }
        if self.config.debug:
            body["traceback"] = traceback.format_exc()
        headers = [native.JSON, (b"x-nest-invocation-id", invocation_id.encode())]
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(int(retry_after)).encode()))
        await _send(send, 500, headers, json.dumps(body).encode())

    async def _timed_out(self, send: Send, invocation_id: str, *, recycle: bool) -> None:
        reason = f"function {self.config.function} did not finish within {self.config.timeout_s:g}s"
        body = json.dumps({"error": "timeout", "reason": reason, "invocation_id": invocation_id}).encode()
        headers = [native.JSON, (b"x-nest-invocation-id", invocation_id.encode())]
        if recycle:
            headers.append((b"x-nest-recycle", b"1"))
            self.recycling = True
            self.sink.system(f"{reason}; the handler thread cannot be stopped, recycling the instance", invocation_id)
        await _send(send, 504, headers, body)
        if recycle and self.on_recycle is not None:
            self.on_recycle()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config.style == "asgi":
            await self.handler(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self, *, wait: bool = False) -> None:
        """Stop the handler threads (`wait`: until they have ended)."""
        self._threads.close(wait=wait)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        parts.append(message.get("body", b""))
        size += len(parts[-1])
        if size > BODY_MAX:
            raise ValueError(f"request body over {BODY_MAX} bytes")
    return b"".join(parts)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    if not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Watch:
    """Cancels the request's task when the client disconnects; armed only for slow invocations (a timer is cheap,
    a task in `receive()` is not), disarmed before the response is sent."""

    __slots__ = ("fired", "receive", "target", "task", "timer")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.target = asyncio.current_task()
        self.fired = False
        self.task: asyncio.Task[Message] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self.timer = None
        self.task = asyncio.ensure_future(self.receive())
        self.task.add_done_callback(self._on_message)

    def _on_message(self, task: asyncio.Task[Message]) -> None:
        if self.task is None or task.cancelled() or task.exception() is not None:
            return
        if task.result()["type"] == "http.disconnect" and self.target is not None:
            self.fired = True
            self.target.cancel()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    stop = disarm


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(key == name for key, _ in scope["headers"])


_Job = tuple["asyncio.AbstractEventLoop", "asyncio.Future[Any]", "Callable[..., Any]", tuple[Any, ...]]


class HandlerThreads:
    """The threads an instance runs its sync handler in: at most `concurrency`, started as requests need them.

    Why not `concurrent.futures.ThreadPoolExecutor` with `loop.run_in_executor`: an instance forked from the warm
    pool pays for every page of the zygote its code touches (copy-on-write: refcounts, the interpreter's inline
    caches), and the executor path runs a good deal of code (work items, `concurrent.futures.Future` with its
    condition variable, `asyncio.wrap_future` chaining both futures, the executor's weak references and exit hooks).
    This does what an instance needs with a queue and `call_soon_threadsafe`: an idle pool instance's unique memory
    ~0.07 MiB smaller (the zygote's rehearsal forked 3 times per variant, measured from outside).

    The semantics are the executor's: a thread per job until `size` threads exist (an idle one takes the job
    otherwise), a job past its caller's timeout keeps its thread (a thread cannot be stopped; the instance recycles
    itself), `close` stops them.
    """

    def __init__(self, size: int, *, name: str = "handler") -> None:
        if size < 1:
            raise ValueError(f"HandlerThreads needs at least one thread, not {size}")
        self.size, self._name = size, name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        """Threads done with a job and not yet given another (as the executor counts them: an overcount is
        possible only once all `size` threads exist, when no thread would be started anyway)."""
        self._lock = threading.Lock()
        self._closed = False

    @property
    def started(self) -> int:
        return len(self._threads)

    def run(self, loop: asyncio.AbstractEventLoop, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """`function(*args)` in one of the threads; the future (of `loop`) gets its result or exception.

        Cancelling the future does not stop a job that has started; one still queued is skipped."""
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler threads are closed")
            self._jobs.put((loop, future, function, args))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return future

    def close(self, *, wait: bool = False) -> None:
        """Drop the jobs not started and stop the threads once their job ends (`wait`: until then)."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(queue.Empty):
                while True:
                    job = self._jobs.get_nowait()
                    if job is not None:
                        job[0].call_soon_threadsafe(job[1].cancel)
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, function, args = job
            result: Any = None
            error: BaseException | None = None
            if not future.cancelled():
                try:
                    result = function(*args)
                except BaseException as exc:  # as the executor does: the caller gets it, the thread goes on
                    error = exc
            with self._lock:  # idle before the caller hears: a job it submits next finds this thread
                self._idle += 1
            _settle(loop, future, result, error)
            del job, loop, future, function, args, result, error  # nothing of it stays referenced while waiting


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        loop.call_soon_threadsafe(_set, future, result, error)


def _set(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
