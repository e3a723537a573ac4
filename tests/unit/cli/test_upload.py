"""`nest deploy`'s upload against a fake Nest (an httpx transport over a real `ChunkStore`): only missing chunks
travel, the manifest last; a chunk gone before the manifest is sent again; an older Nest gets the whole bundle."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
import pytest

from controller.codestore.chunkstore import ChunkStore
from gateway.codeupload.api import parse_query
from gateway.errors import error_body, status_of
from nest.cli.packaging import build_chunked
from nest.cli.upload import upload_package
from nest.client import ClientError, NestClient
from nest.contracts.chunks import Codec, store_path
from nest.contracts.errors import InvalidInput, NestError
from tests.unit.controller.test_chunkstore import sources

if TYPE_CHECKING:
    from pathlib import Path


class FakeNest:
    """The three endpoints over a real chunk store; `incremental=False` plays a Nest from before them."""

    def __init__(self, root: Path, *, incremental: bool = True) -> None:
        self.store = ChunkStore(root)
        self.incremental = incremental
        self.requests: list[tuple[str, str, int]] = []
        self.before_manifest: list[str] = []
        """Chunk digests to delete just before the next manifest arrives (a GC racing the deploy)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append((request.method, request.url.path, len(body)))
        try:
            return self.answer(request, body)
        except NestError as error:
            return httpx.Response(status_of(error), json=error_body(error))

    def answer(self, request: httpx.Request, body: bytes) -> httpx.Response:
        path = request.url.path
        if path.startswith("/api/v1/uploads/") and not self.incremental:
            return httpx.Response(404, text="Not Found")
        if path == "/api/v1/uploads/missing":
            return httpx.Response(200, json={"missing": self.store.missing(parse_query(body))})
        if path.startswith("/api/v1/uploads/chunks/"):
            written = self.store.put_chunk(path.rsplit("/", 1)[1], body)
            return httpx.Response(201 if written else 200, json={"stored": written})
        for digest in self.before_manifest:
            (self.store._root / store_path("chunks", digest)).unlink()
        self.before_manifest = []
        stored = self.store.intake(body)
        self.store.unpin(stored.digest)
        return httpx.Response(201, json={"name": "hello", "version": "v", "created": True, "package": stored.summary()})


def client(fake: FakeNest) -> NestClient:
    return NestClient("http://nest.test", transport=httpx.MockTransport(fake))


def test_a_redeploy_sends_only_the_changed_chunk(tmp_path: Path) -> None:
    directory = sources(tmp_path / "fn", files=300, size=8000)
    fake = FakeNest(tmp_path / "store")
    first = build_chunked(directory, codec=Codec.ZSTD)
    _, report = upload_package(client(fake), "hello", first)
    assert report.incremental
    assert report.sent_chunks == report.chunks == len(first.manifest.chunks) >= 3
    (directory / "pkg" / "module_0007.py").write_text("# changed\n")
    second = build_chunked(directory, codec=Codec.ZSTD)
    fake.requests.clear()
    result, report = upload_package(client(fake), "hello", second)
    assert result["created"]
    assert report.sent_chunks == 1
    assert report.line().startswith(f"uploaded 1 of {report.chunks} chunks ({report.chunks - 1} already stored)")
    methods = [
        (method, path.split("/")[4] if path.startswith("/api/v1/uploads/") else "functions")
        for method, path, _ in fake.requests
    ]
    assert methods == [("POST", "missing"), ("PUT", "chunks"), ("PUT", "functions")]
    assert sum(size for _, _, size in fake.requests) == report.sent_bytes
    assert report.sent_bytes < report.package_bytes / 2


def test_a_chunk_lost_before_the_manifest_is_sent_again(tmp_path: Path) -> None:
    fake = FakeNest(tmp_path / "store")
    built = build_chunked(sources(tmp_path / "fn", files=3), codec=Codec.ZSTD)
    upload_package(client(fake), "hello", built)
    fake.before_manifest = [built.manifest.chunks[0].digest]
    _, report = upload_package(client(fake), "hello", built)
    assert report.sent_chunks == 1, "asked again after the 409 and sent the lost chunk"


def test_a_chunk_lost_twice_fails_with_the_stores_reason(tmp_path: Path) -> None:
    fake = FakeNest(tmp_path / "store")
    built = build_chunked(sources(tmp_path / "fn", files=3), codec=Codec.ZSTD)
    upload_package(client(fake), "hello", built)
    digest = built.manifest.chunks[0].digest
    fake.store.put_chunk = lambda *args: True  # type: ignore[method-assign]  # accepts, keeps nothing
    (fake.store._root / store_path("chunks", digest)).unlink()
    with pytest.raises(ClientError, match=digest[:12]) as failed:
        upload_package(client(fake), "hello", built)
    assert failed.value.status == 409


def test_an_older_nest_gets_the_whole_bundle(tmp_path: Path) -> None:
    fake = FakeNest(tmp_path / "store", incremental=False)
    built = build_chunked(sources(tmp_path / "fn", files=3), codec=Codec.ZSTD)
    result, report = upload_package(client(fake), "hello", built)
    assert result["package"]["new_chunks"] == len(built.manifest.chunks)
    assert not report.incremental
    assert report.sent_bytes == len(built.bundle())
    assert "whole packages only" in report.line()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[]", "body"),
        (b'{"chunks": [], "more": 1}', "body"),
        (b'{"chunks": "abc"}', "chunks"),
        (json.dumps({"chunks": ["a" * 64, "../../etc"]}).encode(), "chunks[1]"),
        (json.dumps({"chunks": [7]}).encode(), "chunks[0]"),
        (json.dumps({"chunks": ["a" * 64] * 4097}).encode(), "chunks"),
    ],
)
def test_a_bad_query_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_query(body)
    assert refused.value.field == field
    assert error_body(refused.value)["problems"][0][0] == field
