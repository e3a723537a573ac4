"""The instance's ASGI app, driven in process: handler styles, return mapping, errors, timeouts, logs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from nest import Response
from runtime.config import RuntimeConfig
from runtime.logs import CapturedStream, LogSink
from runtime.server import InvocationApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


def config(style: str = "native", *, timeout_s: float = 1.0, debug: bool = False) -> RuntimeConfig:
    return RuntimeConfig(
        socket="",
        code_dir="",
        handler="main:handle",
        style=style,
        function="fn",
        version="v1",
        instance="fn-1",
        timeout_s=timeout_s,
        concurrency=4,
        memory_bytes=256 * 1024**2,
        status_fd=-1,
        debug=debug,
    )


@pytest.fixture
def log_pipe() -> Any:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def read_logs(read_end: int) -> list[dict[str, Any]]:
    try:
        data = os.read(read_end, 1 << 20)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
async def serve(log_pipe: tuple[int, int]) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    apps: list[InvocationApp] = []

    def make(handler: Any, **kwargs: Any) -> httpx.AsyncClient:
        sink = LogSink(function="fn", version="v1", instance="fn-1")
        sink.emit = _redirect(sink.emit, log_pipe[1])  # type: ignore[method-assign]
        app = InvocationApp(config(**kwargs), handler, sink)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://instance")

    yield make
    for app in apps:
        app.close()


def _redirect(emit: Any, fd: int) -> Any:
    def to_pipe(stream: str, message: str, invocation_id: str | None, _fd: int = 2) -> None:
        emit(stream, message, invocation_id, fd)

    return to_pipe


@pytest.mark.parametrize(
    ("returned", "status", "content_type", "body"),
    [
        pytest.param({"a": 1}, 200, "application/json", b'{"a":1}', id="dict"),
        pytest.param([1, 2], 200, "application/json", b"[1,2]", id="list"),
        pytest.param("hi", 200, "text/plain; charset=utf-8", b"hi", id="str"),
        pytest.param(b"\x00\x01", 200, "application/octet-stream", b"\x00\x01", id="bytes"),
        pytest.param(None, 204, None, b"", id="none"),
        pytest.param(Response({"x": 1}, status=201, headers={"X-K": "v"}), 201, "application/json", b'{"x":1}', id="r"),
    ],
)
async def test_return_values_map_to_responses(
    serve: Callable[..., httpx.AsyncClient], returned: Any, status: int, content_type: str | None, body: bytes
) -> None:
    async with serve(lambda request: returned) as client:
        response = await client.post("/", headers={"x-nest-invocation-id": "inv-1"})
    assert (response.status_code, response.content) == (status, body)
    assert response.headers.get("content-type") == content_type
    assert response.headers["x-nest-invocation-id"] == "inv-1"


async def test_the_request_object_carries_method_path_query_headers_and_json(
    serve: Callable[..., httpx.AsyncClient],
) -> None:
    async def handle(request: Any) -> dict[str, Any]:
        return {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "header": request.headers["X-Thing"],
            "json": request.json(),
            "id": request.invocation_id,
        }

    async with serve(handle) as client:
        response = await client.put("/a/b?x=1&x=2&y=", json={"k": "v"}, headers={"x-thing": "t"})
    assert response.json() == {
        "method": "PUT",
        "path": "/a/b",
        "query": {"x": "2", "y": ""},
        "header": "t",
        "json": {"k": "v"},
        "id": response.headers["x-nest-invocation-id"],
    }


async def test_a_raising_handler_is_a_500_with_type_and_no_traceback_unless_debug(
    serve: Callable[..., httpx.AsyncClient], log_pipe: tuple[int, int]
) -> None:
    def handle(request: Any) -> None:
        raise KeyError("missing")

    async with serve(handle) as client:
        plain = (await client.get("/")).json()
    async with serve(handle, debug=True) as client:
        debug = (await client.get("/")).json()
    assert (plain["error"], plain["type"]) == ("function_error", "KeyError")
    assert "traceback" not in plain
    assert "KeyError" in debug["traceback"]
    logged = [r for r in read_logs(log_pipe[0]) if r["stream"] == "system"]
    assert any("Traceback" in r["message"] for r in logged), "the traceback is always logged"


async def test_an_unsupported_return_type_names_the_allowed_ones(serve: Callable[..., httpx.AsyncClient]) -> None:
    async with serve(lambda request: 42) as client:
        body = (await client.get("/")).json()
    assert body["error"] == "bad_return"
    assert "return dict, list, str, bytes, None or nest.Response" in body["reason"]


async def test_an_async_handler_past_its_timeout_is_cancelled_with_a_504(
    serve: Callable[..., httpx.AsyncClient],
) -> None:
    async def handle(request: Any) -> str:
        await asyncio.sleep(10)
        return "late"

    async with serve(handle, timeout_s=0.05) as client:
        response = await client.get("/")
    assert response.status_code == 504
    assert "x-nest-recycle" not in response.headers


async def test_a_sync_handler_past_its_timeout_asks_to_be_recycled(serve: Callable[..., httpx.AsyncClient]) -> None:
    recycled = []

    def handle(request: Any) -> str:
        time.sleep(0.3)
        return "late"

    client = serve(handle, timeout_s=0.05)
    app: InvocationApp = client._transport.app  # type: ignore[attr-defined]
    app.on_recycle = lambda: recycled.append(True)
    async with client:
        response = await client.get("/")
    assert response.status_code == 504
    assert response.headers["x-nest-recycle"] == "1"
    assert recycled == [True]
    assert app.recycling


async def test_sync_handlers_run_off_the_event_loop(serve: Callable[..., httpx.AsyncClient]) -> None:
    def handle(request: Any) -> str:
        time.sleep(0.2)
        return "slow"

    async with serve(handle) as client:
        started = time.monotonic()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while time.monotonic() - started < 0.15:
                ticks += 1
                await asyncio.sleep(0.01)

        await asyncio.gather(client.get("/"), ticker())
    assert ticks > 5, "the loop kept running while the handler slept in its thread"


async def test_prints_are_logged_with_their_invocation_id_under_concurrency(
    serve: Callable[..., httpx.AsyncClient], log_pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LogSink(function="fn", version="v1", instance="fn-1")

    async def handle(request: Any) -> str:
        print("start", request.invocation_id)
        await asyncio.sleep(0.01)
        print("end", request.invocation_id, end="")
        return "ok"

    client = serve(handle)
    app: InvocationApp = client._transport.app  # type: ignore[attr-defined]
    monkeypatch.setattr("sys.stdout", CapturedStream(app.sink, stream="stdout", fd=1))
    del sink
    async with client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(5)))
    records = [r for r in read_logs(log_pipe[0]) if r["stream"] == "stdout"]
    assert len(records) == 10
    for record in records:
        assert record["message"].endswith(record["invocation_id"])
    assert {r["invocation_id"] for r in records} == {r.headers["x-nest-invocation-id"] for r in responses}


async def test_the_lambda_style_gets_an_http_api_event_and_a_context(
    serve: Callable[..., httpx.AsyncClient],
) -> None:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "statusCode": 202,
            "headers": {"x-seen": event["rawPath"]},
            "body": json.dumps(
                {
                    "version": event["version"],
                    "query": event["queryStringParameters"],
                    "method": event["requestContext"]["http"]["method"],
                    "body": event["body"],
                    "request_id": context.aws_request_id,
                    "remaining": context.get_remaining_time_in_millis() > 0,
                }
            ),
        }

    async with serve(handler, style="lambda") as client:
        response = await client.post("/x?a=1&a=2", content=b"payload")
    assert response.status_code == 202
    assert response.headers["x-seen"] == "/x"
    assert response.json() == {
        "version": "2.0",
        "query": {"a": "1,2"},
        "method": "POST",
        "body": "payload",
        "request_id": response.headers["x-nest-invocation-id"],
        "remaining": True,
    }


async def test_the_health_endpoint_is_not_an_invocation(serve: Callable[..., httpx.AsyncClient]) -> None:
    calls = []
    async with serve(lambda request: calls.append(1)) as client:
        response = await client.get("/__nest__/health")
    assert response.json() == {"status": "ok", "in_flight": 0}
    assert calls == []
