from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from nest.contracts.chunks import ChunkRef, Codec, FileEntry, PackageManifest, compress, store_path
from runtime.fetch import ATTEMPTS, FetchError, FileChunkSource, HttpChunkSource, open_source

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Store:
    """What the fake code store serves, and how many bad copies of each path it hands out first."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.corrupt: dict[str, int] = {}
        self.requests: list[str] = []


@pytest.fixture
def store() -> Iterator[tuple[Store, str]]:
    state = Store()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.objects.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if state.corrupt.get(self.path, 0) > 0:
                state.corrupt[self.path] -= 1
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.protocol_version = "HTTP/1.1"
    Handler.protocol_version = "HTTP/1.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/api/v1/code"
    server.shutdown()
    server.server_close()


def publish(state: Store) -> tuple[PackageManifest, ChunkRef]:
    import hashlib

    raw = b"VALUE = 42\n"
    chunk = compress(Codec.ZSTD, raw)
    ref = ChunkRef(hashlib.sha256(chunk).hexdigest(), len(chunk), len(raw))
    manifest = PackageManifest(
        Codec.ZSTD, (ref,), (FileEntry("main.py", 0o644, len(raw), 0, 0, hashlib.sha256(raw).hexdigest()),)
    )
    state.objects[f"/api/v1/code/chunks/{ref.digest}"] = chunk
    state.objects[f"/api/v1/code/manifests/{manifest.digest}"] = manifest.to_bytes()
    return manifest, ref


def test_a_corrupted_chunk_is_fetched_again_never_returned(store: tuple[Store, str]) -> None:
    state, url = store
    manifest, ref = publish(state)
    state.corrupt[f"/api/v1/code/chunks/{ref.digest}"] = 1
    source = HttpChunkSource(url)
    assert source.manifest(manifest.digest).complete() == manifest
    assert source.chunk(ref) == state.objects[f"/api/v1/code/chunks/{ref.digest}"]
    assert source.refetches == 1
    source.close()


def test_a_chunk_corrupt_every_time_fails_after_the_attempts(store: tuple[Store, str]) -> None:
    state, url = store
    _, ref = publish(state)
    state.corrupt[f"/api/v1/code/chunks/{ref.digest}"] = ATTEMPTS
    source = HttpChunkSource(url)
    with pytest.raises(FetchError, match="sha256 did not match"):
        source.chunk(ref)
    assert state.requests.count(f"/api/v1/code/chunks/{ref.digest}") == ATTEMPTS
    source.close()


def test_a_manifest_not_matching_its_digest_is_refused(store: tuple[Store, str]) -> None:
    state, url = store
    manifest, _ = publish(state)
    state.corrupt[f"/api/v1/code/manifests/{manifest.digest}"] = ATTEMPTS
    with HttpChunkSource(url) as source, pytest.raises(FetchError, match="manifest"):
        source.manifest(manifest.digest)


def test_a_missing_object_is_an_error_naming_it(store: tuple[Store, str]) -> None:
    _, url = store
    with HttpChunkSource(url) as source, pytest.raises(FetchError, match="HTTP 404"):
        source.manifest("0" * 64)
    with pytest.raises(FetchError, match="not http"):
        HttpChunkSource("file:///etc")


def test_a_local_store_is_read_directly_with_the_same_checks(tmp_path: Path) -> None:
    from controller.codestore.chunkstore import ChunkStore
    from nest.cli.packaging import build_chunked

    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "nest.yaml").write_text("name: hello\n")
    built = build_chunked(tmp_path / "fn", codec=Codec.LZ4)
    ChunkStore(tmp_path / "store").intake(built.bundle())
    source = open_source(f"file://{tmp_path / 'store'}")
    assert isinstance(source, FileChunkSource)
    assert source.manifest(built.manifest.digest).complete() == built.manifest
    ref = built.manifest.chunks[0]
    assert source.chunk(ref) == built.chunks[0]
    stored = tmp_path / "store" / store_path("chunks", ref.digest)
    stored.chmod(0o644)
    stored.write_bytes(b"x" * ref.size)
    with pytest.raises(FetchError, match="sha256 did not match"):
        source.chunk(ref)
    assert source.refetches == ATTEMPTS
