"""The proxy against a real HTTP/1.1 instance on a Unix socket (uvicorn in process), through its ASGI face."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn

from gateway.proxy import FunctionProxy, ProxyConfig
from gateway.routing import RoutingTable
from gateway.upstream import UpstreamPool
from nest.contracts.ids import FunctionName, InstanceId, VersionId
from nest.contracts.model import InstanceAddress, Route, VersionKey
from tests.fakes.demand import FakeDemandSignal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from starlette.types import Receive, Scope, Send

KEY = VersionKey(FunctionName("echo"), VersionId("v1v1v1v1v1v1"))


async def instance_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A stand-in instance: echoes what it got; `/stream` streams, `/recycle` asks to be recycled."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    extra = [(b"x-nest-recycle", b"1")] if scope["path"] == "/recycle" else []
    payload = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": body.decode(),
            "headers": headers,
        }
    ).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), *extra]}
    )
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def instance_socket(tmp_path: Path) -> AsyncIterator[str]:
    socket_path = str(tmp_path / "echo.sock")
    server = uvicorn.Server(uvicorn.Config(instance_app, uds=socket_path, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.01)
    yield socket_path
    server.should_exit = True
    await task


def make_proxy(socket_path: str, *, max_body: int = 1000) -> tuple[FunctionProxy, RoutingTable]:
    table = RoutingTable(demand=FakeDemandSignal())
    table.set_route(Route(KEY, concurrency=4, timeout_s=5, max_body_bytes=max_body, methods=frozenset({"GET", "POST"})))
    table.set_endpoints(KEY, [InstanceAddress(InstanceId("echo-1"), KEY, socket_path, 4)])
    return FunctionProxy(table, UpstreamPool(), ProxyConfig(activation_timeout_s=0.2)), table


def client(proxy: FunctionProxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://gateway")


async def test_method_path_query_headers_and_body_reach_the_instance(instance_socket: str) -> None:
    proxy, table = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.post("/function/echo/a/b?x=1&y=2", content=b'{"name":"x"}', headers={"x-k": "v"})
    assert response.status_code == 200
    seen = response.json()
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == ("POST", "/a/b", "x=1&y=2", '{"name":"x"}')
    assert seen["headers"]["x-k"] == "v"
    assert seen["headers"]["x-nest-invocation-id"]
    assert table.gates[KEY].traffic.in_flight == 0
    assert table.gates[KEY].traffic.total == 1


async def test_keep_alive_connections_are_reused(instance_socket: str) -> None:
    proxy, _ = make_proxy(instance_socket)
    async with client(proxy) as http:
        for _ in range(5):
            assert (await http.get("/function/echo")).status_code == 200
    assert len(proxy.pool._idle[instance_socket]) == 1


async def test_a_streamed_response_arrives_whole(instance_socket: str) -> None:
    proxy, _ = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.get("/function/echo/stream")
    assert response.text == "one two three"


async def test_an_unknown_function_is_a_404_json_error(instance_socket: str) -> None:
    proxy, _ = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.get("/function/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["function"] == "nope"


async def test_a_body_over_the_limit_is_a_413_before_the_instance_sees_it(instance_socket: str) -> None:
    proxy, table = make_proxy(instance_socket, max_body=10)
    async with client(proxy) as http:
        response = await http.post("/function/echo", content=b"x" * 11)
    assert response.status_code == 413
    assert "10 bytes" in response.json()["reason"]
    assert table.gates[KEY].traffic.total == 0


async def test_a_method_outside_the_manifest_is_a_405(instance_socket: str) -> None:
    proxy, _ = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.delete("/function/echo")
    assert response.status_code == 405


async def test_the_runtime_endpoints_are_hidden(instance_socket: str) -> None:
    proxy, _ = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.get("/function/echo/__nest__/health")
    assert response.status_code == 404


async def test_a_recycling_instance_leaves_routing_and_its_header_is_not_forwarded(instance_socket: str) -> None:
    proxy, table = make_proxy(instance_socket)
    async with client(proxy) as http:
        response = await http.get("/function/echo/recycle")
    assert response.status_code == 200
    assert "x-nest-recycle" not in response.headers
    assert table.gates[KEY].endpoints == []


async def test_a_vanished_instance_is_a_502_and_leaves_routing(tmp_path: Path) -> None:
    proxy, table = make_proxy(str(tmp_path / "gone.sock"))
    async with client(proxy) as http:
        response = await http.get("/function/echo")
    assert response.status_code in {502, 504}
    assert table.gates[KEY].endpoints == []
    assert table.gates[KEY].traffic.in_flight == 0
