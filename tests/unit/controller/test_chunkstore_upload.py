"""Incremental uploads into the chunk store: ask what is missing, send those chunks, then the manifest alone."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
import zstandard

from controller.codestore.chunkstore import MAX_QUERY_DIGESTS, STAGED_GRACE_S, ChunkStore, MissingChunks
from nest.cli.packaging import build_chunked
from nest.contracts.chunks import MAX_MANIFEST_BYTES, Codec, pack_bundle, store_path
from nest.contracts.errors import InvalidInput
from tests.unit.controller.test_chunkstore import sources

if TYPE_CHECKING:
    from pathlib import Path

    from nest.cli.packaging import BuiltPackage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manifest_only(built: BuiltPackage) -> bytes:
    return pack_bundle(built.manifest.to_bytes(), [])


def send_missing(store: ChunkStore, built: BuiltPackage) -> list[str]:
    by_digest = {ref.digest: chunk for ref, chunk in zip(built.manifest.chunks, built.chunks, strict=True)}
    missing = store.missing(list(by_digest))
    for digest in missing:
        assert store.put_chunk(digest, by_digest[digest])
    return missing


def test_a_redeploy_sends_only_the_changed_chunk_and_the_manifest(tmp_path: Path) -> None:
    directory = sources(tmp_path / "fn", files=300, size=8000)
    store = ChunkStore(tmp_path / "store")
    first = build_chunked(directory, codec=Codec.ZSTD)
    assert len(first.manifest.chunks) >= 3
    assert len(send_missing(store, first)) == len(first.manifest.chunks)
    stored = store.intake(manifest_only(first))
    assert stored.digest == first.manifest.digest
    assert stored.manifest_text == b"name: hello\n"
    assert stored.new_chunks == 0, "the chunks came one by one, before"
    (directory / "pkg" / "module_0150.py").write_text("# changed\n")
    second = build_chunked(directory, codec=Codec.ZSTD)
    sent = send_missing(store, second)
    assert len(sent) == 1
    assert store.intake(manifest_only(second)).digest == second.manifest.digest
    assert store.missing([ref.digest for ref in second.manifest.chunks]) == []


def test_a_manifest_whose_chunks_are_absent_is_refused_naming_them(tmp_path: Path) -> None:
    built = build_chunked(sources(tmp_path / "fn", files=300, size=8000), codec=Codec.ZSTD)
    store = ChunkStore(tmp_path / "store")
    first, *rest = built.manifest.chunks
    store.put_chunk(first.digest, built.chunks[0])
    with pytest.raises(MissingChunks) as refused:
        store.intake(manifest_only(built))
    assert refused.value.missing == [ref.digest for ref in rest]
    assert refused.value.problems[0] == ("chunks[1]", f"{rest[0].digest} is not stored")
    assert rest[0].digest in str(refused.value)
    assert not store.has_manifest(built.manifest.digest)


def test_a_corrupted_stored_chunk_is_dropped_and_asked_for_again(tmp_path: Path) -> None:
    built = build_chunked(sources(tmp_path / "fn", files=5), codec=Codec.ZSTD)
    store = ChunkStore(tmp_path / "store")
    send_missing(store, built)
    path = tmp_path / "store" / store_path("chunks", built.manifest.chunks[0].digest)
    path.chmod(0o644)
    path.write_bytes(b"rotten")
    with pytest.raises(MissingChunks):
        store.intake(manifest_only(built))
    assert send_missing(store, built) == [built.manifest.chunks[0].digest]
    assert store.intake(manifest_only(built)).digest == built.manifest.digest


def test_a_chunk_must_match_its_digest(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(InvalidInput, match="sha256 is"):
        store.put_chunk("0" * 64, b"data")
    with pytest.raises(InvalidInput, match="digest"):
        store.put_chunk("../../state.db", b"data")
    with pytest.raises(InvalidInput, match="empty"):
        store.put_chunk(hashlib.sha256(b"").hexdigest(), b"")
    assert not list(tmp_path.rglob("*"))


def test_a_query_is_bounded_and_validated(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(InvalidInput, match=r"chunks\[1\]"):
        store.missing(["a" * 64, "A" * 64])
    with pytest.raises(InvalidInput, match="more than"):
        store.missing(["a" * 64] * (MAX_QUERY_DIGESTS + 1))
    assert store.missing(["a" * 64, "a" * 64, "b" * 64]) == ["a" * 64, "b" * 64]


def test_staged_chunks_survive_garbage_collection_for_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    store = ChunkStore(tmp_path / "store", clock=clock)
    old = build_chunked(sources(tmp_path / "old", files=3, seed=1), codec=Codec.ZSTD)
    new = build_chunked(sources(tmp_path / "new", files=3, seed=2), codec=Codec.ZSTD)
    stored = store.intake(old.bundle())
    store.unpin(stored.digest)
    clock.now += 2 * STAGED_GRACE_S
    send_missing(store, new)  # uploaded, manifest not sent yet
    assert store.missing([old.manifest.chunks[0].digest]) == []  # confirmed present: staged too
    assert store.remove_unreferenced(set()) == 1, "only the old manifest: every chunk is staged"
    assert store.intake(manifest_only(new)).digest == new.manifest.digest
    store.unpin(new.manifest.digest)
    clock.now += STAGED_GRACE_S + 1
    assert store.remove_unreferenced({new.manifest.digest}) == 1, "the old chunk, unstaged now"


def test_the_store_tells_the_cache_janitor_after_a_deploy_and_a_clean_up(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    calls: list[str] = []
    store.on_change = lambda: calls.append("changed")
    stored = store.intake(build_chunked(sources(tmp_path / "fn"), codec=Codec.ZSTD).bundle())
    store.unpin(stored.digest)
    store.remove_unreferenced(set())
    assert calls == ["changed", "changed"]


def test_a_compressed_manifest_is_inflated_within_the_bomb_guard(tmp_path: Path) -> None:
    built = build_chunked(sources(tmp_path / "fn", files=3), codec=Codec.ZSTD)
    store = ChunkStore(tmp_path / "store")
    send_missing(store, built)
    squeezed = zstandard.ZstdCompressor(level=6, write_content_size=True).compress(built.manifest.to_bytes())
    assert store.intake(pack_bundle(squeezed, [])).digest == built.manifest.digest
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(built.manifest.to_bytes())
    with pytest.raises(InvalidInput, match="declare a size"):
        store.intake(pack_bundle(unsized, []))
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(InvalidInput, match="declare a size"):
        store.intake(pack_bundle(bomb, []))
