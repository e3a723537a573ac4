"""The control API, `/api/v1/...`: deploy, list, describe, delete functions, read their logs, fetch code packages.

Thin Starlette endpoints over the `ControlPlane` port: parse and bound the input, call, answer JSON. Errors are
`NestError`s, mapped to status and body by `gateway/errors.py` through one exception handler in `gateway/app.py`.
Each endpoint's docstring carries its OpenAPI description (served at `/api/v1/openapi.json`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from nest.contracts.errors import InvalidInput, PayloadTooLarge
from nest.contracts.manifest import validate_name

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from gateway.ports import ControlPlane

MAX_TAIL = 10_000

SCHEMAS = SchemaGenerator(
    {"openapi": "3.0.3", "info": {"title": "Nest control API", "version": "1"}, "servers": [{"url": "/"}]}
)


class ControlApi:
    """The endpoints, bound to one control plane."""

    def __init__(self, control: ControlPlane, *, max_package_bytes: int) -> None:
        self.control = control
        self.max_package_bytes = max_package_bytes

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
        archive = await _read_bounded(request, self.max_package_bytes)
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
        kind = request.path_params["kind"]
        path = self.control.code_file(kind, request.path_params["digest"])
        media_type = "application/json" if kind == "manifests" else "application/octet-stream"
        headers = {"cache-control": "public, max-age=31536000, immutable"}
        return _ObjectResponse(path, media_type=media_type, headers=headers)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(SCHEMAS.get_schema(self.routes()))


class _ObjectResponse(FileResponse):
    """One read and one send per object (chunks are at most 4 MiB): FileResponse's 64 KiB pieces, each a thread
    hop, served a chunk at ~60 MB/s here, against ~3x that in one piece."""

    chunk_size = 4 * 1024 * 1024


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


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("package", limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("package", limit)
        parts.append(chunk)
    if not size:
        raise InvalidInput("package", "the request body is empty (send the package that `nest deploy` builds)")
    return b"".join(parts)
