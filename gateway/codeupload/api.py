"""The incremental upload API: ask which chunks the code store lacks, send only those, then the manifest.

    POST /api/v1/uploads/missing          {"chunks": ["<sha256>", ...]}  ->  {"missing": [...], "stored": n}
    PUT  /api/v1/uploads/chunks/{digest}  the compressed chunk           ->  201 (new) or 200 (had it)

then `PUT /api/v1/functions/{name}` with the manifest alone (`nest/contracts/chunks.py` bundle with no chunks),
which the store verifies against the chunks on its disk (`controller/codestore/chunkstore.py`) and refuses with
409 `missing_chunks`, naming them, if any is absent. A redeploy of a mostly unchanged function so sends one chunk
instead of twenty. The whole-bundle deploy stays for older clients. Inputs are bounded before they are read:
at most `MAX_QUERY_DIGESTS` digests in a query body of `MAX_QUERY_BYTES`, a chunk of `MAX_UPLOAD_CHUNK_BYTES`;
every digest must be 64 lowercase hex characters; a bad one is a 400 whose `problems` names the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from nest.contracts.chunks import DIGEST, MAX_CHUNK_BYTES
from nest.contracts.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.requests import Request
    from starlette.responses import Response

MAX_QUERY_DIGESTS = 4096
"""As the store's own bound (`controller/codestore/chunkstore.py`): ~520 chunks make a package at 512 MiB."""
MAX_QUERY_BYTES = 512 * 1024
"""4096 digests of 64 characters, quoted and separated, with room to spare."""
MAX_UPLOAD_CHUNK_BYTES = 2 * MAX_CHUNK_BYTES
"""Twice the largest raw chunk: the manifest's own bound on a compressed chunk's size."""


class ChunkIntake(Protocol):
    """What this API asks of the code store (`ChunkStore` satisfies it); both calls block, so run in a thread."""

    def missing(self, digests: Sequence[str]) -> list[str]: ...

    def put_chunk(self, digest: str, data: bytes) -> bool: ...


class FieldError(InvalidInput):
    """An `InvalidInput` whose JSON body also lists `problems: [[field, message]]`, like manifest errors."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.problems = [(field, problem)]


def parse_query(body: bytes) -> list[str]:
    """Pure: the digests of a `missing` query, or `FieldError` naming the first bad field."""
    try:
        document: Any = json.loads(body)
    except ValueError as exc:
        raise FieldError("body", f"not JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"chunks"}:
        raise FieldError("body", 'expected a JSON object with exactly one key, "chunks"')
    digests = document["chunks"]
    if not isinstance(digests, list):
        raise FieldError("chunks", "expected a list of sha256 hex digests")
    if len(digests) > MAX_QUERY_DIGESTS:
        raise FieldError("chunks", f"{len(digests)} digests, more than {MAX_QUERY_DIGESTS} in one query")
    for index, digest in enumerate(digests):
        if not isinstance(digest, str) or not DIGEST.match(digest):
            shown = digest[:80] if isinstance(digest, str) else digest
            raise FieldError(f"chunks[{index}]", f"{shown!r} is not a sha256 hex digest (64 lowercase hex)")
    return digests


class CodeUploadApi:
    """The two endpoints, over one chunk store."""

    def __init__(self, store: ChunkIntake) -> None:
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/uploads/missing", self.missing, methods=["POST"]),
            Route("/api/v1/uploads/chunks/{digest:str}", self.put_chunk, methods=["PUT"]),
        ]

    async def missing(self, request: Request) -> Response:
        """
        summary: Which of a package's chunks the code store lacks (send only those, then the manifest).
        requestBody: {content: {application/json: {schema: {type: object, properties: {chunks: {type: array}}}}}}
        responses:
          200: {description: "{missing: [digest, ...] in the order asked, stored: how many it has}"}
          400: {description: "a malformed body or digest, with problems [[field, message]]"}
          413: {description: "more than 512 KiB of query"}
        """
        digests = parse_query(await read_bounded(request, MAX_QUERY_BYTES, "body"))
        absent = await asyncio.to_thread(self.store.missing, digests)
        return JSONResponse({"missing": absent, "stored": len(set(digests)) - len(absent)})

    async def put_chunk(self, request: Request) -> Response:
        """
        summary: Upload one compressed chunk; its sha256 must be the digest in the path.
        requestBody: {content: {application/octet-stream: {schema: {type: string, format: binary}}}}
        responses:
          201: {description: "{digest, stored: true}: new to the store"}
          200: {description: "{digest, stored: false}: the store had it"}
          400: {description: "a malformed digest, an empty body, or bytes whose sha256 differ"}
          413: {description: "larger than a chunk can be (8 MiB)"}
        """
        digest = request.path_params["digest"]
        if not DIGEST.match(digest):
            raise FieldError("digest", f"{digest[:80]!r} is not a sha256 hex digest (64 lowercase hex)")
        data = await read_bounded(request, MAX_UPLOAD_CHUNK_BYTES, "chunk")
        written = await asyncio.to_thread(self.store.put_chunk, digest, data)
        return JSONResponse({"digest": digest, "stored": written}, status_code=201 if written else 200)


async def read_bounded(request: Request, limit: int, what: str, *, empty: InvalidInput | None = None) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes, declared or streamed; 400 if empty (`empty`,
    else a `FieldError` naming `what`)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(what, limit)
    parts: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise PayloadTooLarge(what, limit)
        parts.append(piece)
    if not size:
        raise empty if empty is not None else FieldError(what, "the request body is empty")
    return b"".join(parts)
