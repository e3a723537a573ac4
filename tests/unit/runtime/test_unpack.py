from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import BuiltPackage, build_chunked
from nest.contracts.chunks import MAX_CHUNK_BYTES, Codec, ManifestHead
from nest.contracts.errors import InvalidInput
from runtime.unpack import Materialised, cache_dir_for, ensure_package
from tests.fakes.chunk_source import FakeChunkSource

if TYPE_CHECKING:
    from pathlib import Path

    from nest.contracts.chunks import PackageManifest


def package(root: Path, codec: Codec = Codec.ZSTD) -> BuiltPackage:
    (root / "lib").mkdir(parents=True)
    (root / "nest.yaml").write_text("name: hello\n")
    (root / "main.py").write_text("from lib.helper import VALUE\n")
    (root / "lib" / "helper.py").write_text("VALUE = 42\n")
    (root / "lib" / "empty.py").write_text("")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "big.bin").write_bytes(os.urandom(MAX_CHUNK_BYTES + 12345))  # spans two chunks
    (root / "alias.py").symlink_to("lib/helper.py")
    return build_chunked(root, codec=codec)


@pytest.mark.parametrize("codec", list(Codec))
def test_a_package_is_materialised_read_only_in_the_node_cache(tmp_path: Path, codec: Codec) -> None:
    built = package(tmp_path / "fn", codec)
    source = FakeChunkSource(built.manifest, built.chunks)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    done = ensure_package(target, built.manifest.digest, source)
    assert not done.cached
    for relative in ("nest.yaml", "main.py", "lib/helper.py", "lib/empty.py", "run.sh", "big.bin"):
        assert (target / relative).read_bytes() == (tmp_path / "fn" / relative).read_bytes(), relative
    assert os.readlink(target / "alias.py") == "lib/helper.py"
    assert stat.S_IMODE((target / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((target / "big.bin").stat().st_mode) == 0o444
    assert stat.S_IMODE((target / "lib").stat().st_mode) == 0o555
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_a_second_start_finds_the_cache_and_fetches_nothing(tmp_path: Path) -> None:
    built = package(tmp_path / "fn")
    source = FakeChunkSource(built.manifest, built.chunks)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, source)
    asked = (source.manifest_requests, len(source.chunk_requests))
    assert ensure_package(target, built.manifest.digest, source) == Materialised(target)
    assert (source.manifest_requests, len(source.chunk_requests)) == asked


def test_two_starters_of_one_version_fetch_it_once(tmp_path: Path) -> None:
    built = package(tmp_path / "fn")
    source = FakeChunkSource(built.manifest, built.chunks, delay_s=0.2)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    results: list[Materialised] = []
    starters = [
        threading.Thread(target=lambda: results.append(ensure_package(target, built.manifest.digest, source)))
        for _ in range(2)
    ]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    assert source.manifest_requests == 1
    assert len(source.chunk_requests) == len(built.manifest.chunks)
    assert sorted(result.cached for result in results) == [False, True]
    assert (target / "main.py").is_file()


class _Broken(FakeChunkSource):
    def chunk(self, ref: object, buffer: bytearray | None = None) -> bytes:
        raise OSError("connection reset")


class _BadFiles(FakeChunkSource):
    """A manifest whose chunk list reads but whose files do not: the chunks are in flight when that is found."""

    def manifest(self, digest: str) -> ManifestHead | PackageManifest:
        head = super().manifest(digest)
        assert isinstance(head, ManifestHead)
        return ManifestHead(head.codec, head.chunks, head.document.replace(b'"files":[', b'"files":[1,'))


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (_Broken, OSError, "connection reset"),  # a chunk fails
        (_BadFiles, InvalidInput, "not a Nest package manifest"),  # the files fail while chunks are in flight
    ],
)
def test_a_failed_materialisation_leaves_nothing_behind(
    tmp_path: Path, source: type[FakeChunkSource], error: type[Exception], match: str
) -> None:
    built = package(tmp_path / "fn")
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    with pytest.raises(error, match=match):
        ensure_package(target, built.manifest.digest, source(built.manifest, built.chunks))
    assert [p.name for p in target.parent.iterdir()] == [f".{built.manifest.digest}.lock"]
    done = ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    assert not done.cached
