from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import TYPE_CHECKING

import pytest

from controller.codestore.chunkstore import ChunkStore
from nest.cli.packaging import BuiltPackage, build_chunked
from nest.contracts.chunks import ChunkRef, Codec, FileEntry, PackageLimits, PackageManifest, compress, pack_bundle
from nest.contracts.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from pathlib import Path


def sources(root: Path, *, files: int = 1, size: int = 100, seed: int = 7) -> Path:
    """A function directory with `files` pseudo-random Python modules of about `size` bytes each."""
    rng = random.Random(seed)
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "nest.yaml").write_text("name: hello\n")
    (root / "main.py").write_text("def handle(request):\n    return 1\n")
    for index in range(files):
        words = " ".join(f"name_{rng.randrange(10_000)}" for _ in range(size // 10))
        (root / "pkg" / f"module_{index:04}.py").write_text(f"# {words}\n")
    return root


def hand_made(files: dict[str, bytes], *, codec: Codec = Codec.ZSTD) -> tuple[PackageManifest, list[bytes]]:
    """One chunk holding `files` in order: for packages `nest deploy` would never build."""
    raw = b"".join(files.values())
    chunk = compress(codec, raw)
    entries, offset = [], 0
    for path, content in files.items():
        entries.append(FileEntry(path, 0o644, len(content), 0, offset, hashlib.sha256(content).hexdigest()))
        offset += len(content)
    refs = (ChunkRef(hashlib.sha256(chunk).hexdigest(), len(chunk), len(raw)),)
    return PackageManifest(codec, refs, tuple(entries)), [chunk]


def stored_objects(root: Path) -> int:
    return len(list((root / "objects").glob("??/*")))


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_a_package_is_stored_as_chunks_and_a_manifest_by_digest(tmp_path: Path, codec: Codec) -> None:
    built = build_chunked(sources(tmp_path / "fn", files=20), codec=codec)
    store = ChunkStore(tmp_path / "chunks")
    stored = store.intake(built.bundle())
    assert stored.digest == built.manifest.digest
    assert stored.manifest_text == b"name: hello\n"
    assert store.path_of("manifests", stored.digest).read_bytes() == built.manifest.to_bytes()
    chunk = built.manifest.chunks[0]
    assert store.path_of("chunks", chunk.digest).read_bytes() == built.chunks[0]
    assert store.has_manifest(stored.digest)
    with pytest.raises(NotFound):
        store.path_of("chunks", "0" * 64)
    with pytest.raises(NotFound):
        store.path_of("secrets", stored.digest)
    with pytest.raises(NotFound):
        store.path_of("chunks", "../../etc/passwd")


def test_a_redeploy_with_one_file_changed_stores_only_its_chunk(tmp_path: Path) -> None:
    directory = sources(tmp_path / "fn", files=300, size=12_000)
    store = ChunkStore(tmp_path / "chunks")
    first = store.intake(build_chunked(directory, codec=Codec.ZSTD).bundle())
    assert first.chunks >= 3
    assert first.new_chunks == first.chunks
    (directory / "pkg" / "module_0150.py").write_text("# changed\n")
    second = store.intake(build_chunked(directory, codec=Codec.ZSTD).bundle())
    assert second.digest != first.digest
    assert second.new_chunks == 1
    assert stored_objects(tmp_path / "chunks") == first.chunks + 1
    again = store.intake(build_chunked(directory, codec=Codec.ZSTD).bundle())
    assert (again.digest, again.new_chunks) == (second.digest, 0)


def refuse(store: ChunkStore, manifest: PackageManifest, chunks: list[bytes], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as raised:
        store.intake(pack_bundle(manifest.to_bytes(), chunks))
    assert raised.value.field.startswith("package")


def test_a_corrupted_chunk_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    built = build_chunked(sources(tmp_path / "fn"), codec=Codec.LZ4)
    store = ChunkStore(tmp_path / "chunks")
    corrupted = bytearray(built.chunks[0])
    corrupted[-1] ^= 0xFF
    refuse(store, built.manifest, [bytes(corrupted)], r"chunks\[0\]: sha256 does not match")
    assert not (tmp_path / "chunks").exists()


def test_a_file_whose_bytes_do_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    manifest, chunks = hand_made({"nest.yaml": b"name: hello\n", "main.py": b"x = 1\n"})
    lying = dataclasses.replace(manifest.files[1], digest="0" * 64)
    refuse(
        ChunkStore(tmp_path), dataclasses.replace(manifest, files=(manifest.files[0], lying)), chunks, "main.py: sha256"
    )


def test_a_package_without_nest_yaml_is_refused(tmp_path: Path) -> None:
    manifest, chunks = hand_made({"main.py": b"x = 1\n"})
    refuse(ChunkStore(tmp_path), manifest, chunks, "no nest.yaml")


def test_a_path_escaping_the_tree_is_refused_naming_it(tmp_path: Path) -> None:
    manifest, chunks = hand_made({"nest.yaml": b"name: hello\n", "../evil.py": b"x = 1\n"})
    refuse(ChunkStore(tmp_path), manifest, chunks, r"\.\./evil\.py: escapes")


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_a_chunk_unpacking_past_its_declared_size_is_refused(tmp_path: Path, codec: Codec) -> None:
    manifest, chunks = hand_made({"nest.yaml": b"name: hello\n", "zeros.bin": bytes(2 * 1024**2)}, codec=codec)
    small = dataclasses.replace(manifest.chunks[0], raw_size=1024)
    short = [dataclasses.replace(entry, size=min(entry.size, 1024 - 12)) for entry in manifest.files]
    refuse(ChunkStore(tmp_path), dataclasses.replace(manifest, chunks=(small,), files=tuple(short)), chunks, "bytes")


def test_the_unpacked_size_limit_is_enforced(tmp_path: Path) -> None:
    manifest, chunks = hand_made({"nest.yaml": b"name: hello\n", "zeros.bin": bytes(1024**2)})
    store = ChunkStore(tmp_path, limits=PackageLimits(max_unpacked_bytes=1024))
    refuse(store, manifest, chunks, "unpacks to more than 1024 bytes")


def test_unreferenced_manifests_and_chunks_are_removed(tmp_path: Path) -> None:
    directory = sources(tmp_path / "fn", files=3)
    store = ChunkStore(tmp_path / "chunks")
    first = store.intake(build_chunked(directory, codec=Codec.ZSTD).bundle())
    (directory / "main.py").write_text("def handle(request):\n    return 2\n")
    built: BuiltPackage = build_chunked(directory, codec=Codec.ZSTD)
    second = store.intake(built.bundle())
    assert store.remove_unreferenced(set()) == 0, "stored but not yet recorded: pinned"
    store.unpin(first.digest)
    store.unpin(second.digest)
    assert store.remove_unreferenced({second.digest}) == 2  # the first manifest and its one chunk
    assert not store.has_manifest(first.digest)
    assert store.path_of("chunks", built.manifest.chunks[0].digest).is_file()
