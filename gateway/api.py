"""The control API, `/api/v1/...`: deploy, list, describe, delete functions, read their logs, fetch code packages.

Thin Starlette endpoints over the `ControlPlane` port: parse and bound the input, call, answer JSON. Errors are
`NestError`s, mapped to status and body by `gateway/errors.py` through one exception handler in `gateway/app.py`.
Each endpoint's docstring carries its OpenAPI description (served at `/api/v1/openapi.json`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from gateway.codeupload.api import read_bounded
from gateway.errors import MethodNotAllowed, send_error
from nest.contracts.errors import InvalidInput, NestError, NotFound
from nest.contracts.manifest import validate_name

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from gateway.ports import ControlPlane

MAX_TAIL = 10_000
EMPTY_PACKAGE = "the request body is empty (send the package that `nest deploy` builds)"
CODE_PREFIX = "/api/v1/code/"
_CACHE_FOREVER = (b"cache-control", b"public, max-age=31536000, immutable")

SCHEMAS = SchemaGenerator(
    {"openapi": "3.0.3", "info": {"title": "Nest control API", "version": "1"}, "servers": [{"url": "/"}]}
)


class ControlApi:
    """The endpoints, bound to one control plane."""

    def __init__(self, control: ControlPlane, *, max_package_bytes: int) -> None:
        self.control = control
        self.max_package_bytes = max_package_bytes
        self.code_objects = CodeObjects(control)
        """`/api/v1/code/...` as plain ASGI, which `gateway/app.py` calls before Starlette (the fast path)."""

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/functions", self.list_functions, methods=["GET"]),
            Route("/api/v1/functions/{name}", self.deploy, methods=["PUT"]),
            Route("/api/v1/functions/{name}", self.describe, methods=["GET"]),
            Route("/api/v1/functions/{name}", self.delete, methods=["DELETE"]),
            Route("/api/v1/functions/{name}/logs", self.logs, methods=["GET"]),
            Route("/api/v1/code/{kind:str}/{digest:str}", self.code, methods=["GET", "HEAD"]),
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"], include_in_schema=False),
        ]

    async def list_functions(self, request: Request) -> Response:
        """
        summary: List functions with their live version and instance counts.
        responses:
          200: {description: "{functions: [{name, version, url, ready, starting, updated_at}]}"}
        """
        return JSONResponse({"functions": await self.control.list_functions()})

    async def deploy(self, request: Request) -> Response:
        """
        summary: Deploy a function from its code package (nest/contracts/chunks.py; a gzip tar is still taken).
        description: Creates an immutable version; identical code and config is a no-op (200, created false).
        requestBody: {content: {application/vnd.nest.package: {schema: {type: string, format: binary}}}}
        responses:
          201: {description: "{name, version, url, created: true, previous_version}"}
          200: {description: "unchanged: {name, version, url, created: false}"}
          400: {description: "invalid manifest or package, with problems [[field, message]]"}
          413: {description: "package larger than the limit"}
        """
        name = _name(request)
        archive = await read_bounded(
            request, self.max_package_bytes, "package", empty=InvalidInput("package", EMPTY_PACKAGE)
        )
        result = await self.control.deploy(name, archive)
        return JSONResponse(result, status_code=201 if result.get("created") else 200)

    async def describe(self, request: Request) -> Response:
        """
        summary: Describe a function, its versions, instances, scaling decisions and last init error.
        responses:
          200: {description: "the function"}
          404: {description: "no such function"}
        """
        return JSONResponse(await self.control.describe(_name(request)))

    async def delete(self, request: Request) -> Response:
        """
        summary: Delete a function, draining and stopping its instances.
        responses:
          200: {description: "{name, deleted: true}"}
          404: {description: "no such function"}
        """
        return JSONResponse(await self.control.delete(_name(request)))

    async def logs(self, request: Request) -> Response:
        """
        summary: The function's logs as NDJSON, optionally following new lines.
        parameters:
          - {name: tail, in: query, schema: {type: integer, default: 100}}
          - {name: follow, in: query, schema: {type: boolean, default: false}}
        responses:
          200: {description: "application/x-ndjson: {ts, stream, function, version, instance, invocation_id, message}"}
        """
        name = _name(request)
        tail = _int_param(request, "tail", default=100, low=0, high=MAX_TAIL)
        follow = request.query_params.get("follow", "false").lower() in {"1", "true", "yes"}
        await self.control.describe(name)  # 404 before the stream starts
        lines = self.control.logs(name, tail=tail, follow=follow)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    async def code(self, request: Request) -> Response:
        """
        summary: A stored code-package object by digest, for instances to fetch (range requests allowed).
        description: kind is `manifests` (canonical JSON; its sha256 is the digest) or `chunks` (one compressed
          frame; its sha256 is the digest). Immutable, so cacheable forever.
        responses:
          200: {description: "the bytes"}
          206: {description: "the requested range"}
          404: {description: "no such object"}
        """
        status, headers, body = self.code_objects.answer(
            request.path_params["kind"], request.path_params["digest"], request.headers.get("range")
        )
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(SCHEMAS.get_schema(self.routes()))


class CodeObjects:
    """`GET|HEAD /api/v1/code/{kind}/{digest}` as a plain ASGI app: one stat, one read, one send per object.

    Instances fetch a package's chunks here in parallel, so each request's fixed cost is what a cold start waits
    for. Starlette's `FileResponse` (a thread hop for the stat, the open and each read) served the 19 chunks of
    bench_code_fetch's 3.6 MB zstd package in 16 ms one after another; this in ~4 ms (~0.2 ms a request, most of
    it the HTTP exchange itself). Without Starlette's routing, ~35 us a request less again. The file is read on
    the event loop: objects are at most a few MiB, just written by a deploy, so in the page cache (~0.1 ms per
    MiB), and a thread hop to read them cost more (~0.2 ms a request on this 2-core machine) than the read.

    Range requests (`bytes=a-b`, `a-`, `-n`) answer 206 or 416; a multi-range request gets the whole object
    (RFC 9110 allows a server to ignore Range). The objects are immutable: cacheable forever.
    """

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, _, digest = scope["path"][len(CODE_PREFIX) :].partition("/")
        head = scope["method"] == "HEAD"
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("method", f"{scope['method']} is not allowed here (GET or HEAD)")
            wanted = next((value for key, value in scope["headers"] if key == b"range"), None)
            status, headers, body = self.answer(kind, digest, None if wanted is None else wanted.decode("latin-1"))
        except NestError as error:
            await send_error(send, error)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    def answer(self, kind: str, digest: str, wanted: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for an object (the whole of it, or the range asked for); `NotFound`."""
        path = self.control.code_file(kind, digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # collected between the check and the read
            raise NotFound(kind.removesuffix("s"), digest) from None
        kind_header = (b"content-type", b"application/json" if kind == "manifests" else b"application/octet-stream")
        headers = [kind_header, _CACHE_FOREVER, (b"accept-ranges", b"bytes")]
        span = byte_range(wanted, len(data)) if wanted is not None else None
        if span is None:
            return 200, [*headers, (b"content-length", str(len(data)).encode())], data
        if not span:
            unsatisfiable = [(b"content-range", f"bytes */{len(data)}".encode()), (b"content-length", b"0")]
            return 416, [*headers, *unsatisfiable], b""
        content_range = (b"content-range", f"bytes {span.start}-{span.stop - 1}/{len(data)}".encode())
        return (
            206,
            [*headers, content_range, (b"content-length", str(len(span)).encode())],
            data[span.start : span.stop],
        )


def byte_range(header: str, size: int) -> range | None:
    """Pure: the byte positions of `size` bytes a `Range` header asks for, empty if none of them exist (416);
    None to send all of it (not `bytes=`, several ranges, or malformed: RFC 9110 lets a server ignore Range)."""
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if unit.strip().lower() != "bytes" or not dash or not (first or last):
        return None
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None  # also "a-b,c-d": "b,c-d" is not a number
    if not first:  # the last n bytes
        return range(max(0, size - int(last)), size) if int(last) else range(0)
    if last and int(last) < int(first):
        return None  # invalid, ignored
    return range(int(first), min(size, int(last) + 1) if last else size)


def _name(request: Request) -> str:
    return validate_name(request.path_params["name"])


def _int_param(request: Request, key: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(key, f"{raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise InvalidInput(key, f"{value} is outside {low}..{high}")
    return value
