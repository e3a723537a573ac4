from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from nest.contracts.chunks import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    ChunkRef,
    Codec,
    FileEntry,
    Layout,
    LinkEntry,
    ManifestHead,
    PackageLimits,
    PackageManifest,
    check_frame,
    compress,
    decompress,
    layout,
    pack_bundle,
    parse_manifest,
    read_verified_manifest,
    split_bundle,
)
from nest.contracts.errors import InvalidInput

DIGEST = "a" * 64


def document(files: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format": 1,
        "codec": "zstd",
        "chunks": [{"digest": DIGEST, "size": 10, "raw_size": 100}],
        "files": files if files is not None else [entry("main.py")],
        "links": [],
    }
    return base | overrides


def entry(path: str, **overrides: Any) -> dict[str, Any]:
    return {"path": path, "mode": 0o644, "size": 10, "chunk": 0, "offset": 0, "digest": DIGEST} | overrides


def parse(doc: dict[str, Any], limits: PackageLimits | None = None) -> PackageManifest:
    return parse_manifest(json.dumps(doc).encode(), limits=limits)


@given(st.binary(max_size=50_000), st.sampled_from(list(Codec)))
@settings(max_examples=40, deadline=None)
@example(b"", Codec.LZ4)
def test_every_codec_round_trips(raw: bytes, codec: Codec) -> None:
    assert decompress(codec, compress(codec, raw), len(raw)) == raw


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_a_chunk_cannot_unpack_past_its_declared_size(codec: Codec) -> None:
    bomb = compress(codec, bytes(1024**2))
    with pytest.raises(InvalidInput, match="bytes"):
        decompress(codec, bomb, 1024)


@pytest.mark.parametrize("codec", list(Codec))
def test_a_frame_header_is_checked_against_the_declared_size_without_decoding(codec: Codec) -> None:
    frame = compress(codec, b"x" * 5000)
    check_frame(codec, frame, 5000)
    with pytest.raises(InvalidInput, match="declares"):
        check_frame(codec, frame, 4999)
    if codec is not Codec.NONE:
        with pytest.raises(InvalidInput, match="not a valid"):
            check_frame(codec, b"not a frame", 5000)


@given(st.lists(st.tuples(st.text("abc/", min_size=1, max_size=8), st.integers(0, 3 * MAX_CHUNK_BYTES)), max_size=40))
@settings(max_examples=60, deadline=None)
def test_layout_places_every_byte_once_in_chunks_of_at_most_4_mib(files: list[tuple[str, int]]) -> None:
    places, sizes = layout(files)
    assert all(0 < size <= MAX_CHUNK_BYTES for size in sizes)
    assert sum(sizes) == sum(size for _, size in files)
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    position = 0
    for (_, size), (chunk, offset) in zip(files, places, strict=True):
        assert offset < MAX_CHUNK_BYTES
        if size:
            assert starts[chunk] + offset == position
        position += size


def test_changing_one_file_keeps_the_other_chunk_boundaries() -> None:
    files = [(f"pkg/module_{index:04}.py", 40_000) for index in range(300)]
    _, before = layout(files)
    files[150] = (files[150][0], 47_000)
    _, after = layout(files)
    assert len(before) > 5
    assert all(size >= MIN_CHUNK_BYTES for size in before[:-1])
    changed = [index for index, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(changed) == 1


def test_the_manifest_is_canonical_and_its_digest_is_stable() -> None:
    manifest = parse(document())
    assert parse_manifest(manifest.to_bytes()) == manifest
    assert manifest.digest == parse_manifest(manifest.to_bytes()).digest


def test_a_verified_manifest_gives_its_chunks_first_and_its_files_on_completion() -> None:
    manifest = parse(document(links=[{"path": "alias.py", "target": "main.py"}]))
    head = read_verified_manifest(manifest.to_bytes())
    assert isinstance(head, ManifestHead)
    assert (head.codec, head.chunks, head.layout) == (manifest.codec, manifest.chunks, Layout.TREE)
    assert head.complete() == manifest
    archive = replace(manifest, layout=Layout.ARCHIVE)
    archive_head = read_verified_manifest(archive.to_bytes())
    assert isinstance(archive_head, ManifestHead)
    assert archive_head.layout is Layout.ARCHIVE  # known before the files are read: the chunks are kept packed
    assert archive_head.complete() == archive
    spaced = json.dumps(json.loads(manifest.to_bytes()), indent=1).encode()  # valid, not canonical: read whole
    assert read_verified_manifest(spaced) == manifest
    with pytest.raises(InvalidInput, match="does not match"):
        ManifestHead(Codec.LZ4, manifest.chunks, manifest.to_bytes()).complete()
    with pytest.raises(InvalidInput, match="does not match"):
        ManifestHead(manifest.codec, manifest.chunks, manifest.to_bytes(), Layout.ARCHIVE).complete()
    with pytest.raises(InvalidInput, match="not a Nest package manifest"):
        read_verified_manifest(manifest.to_bytes().replace(b'"files":[', b'"files":[1,')).complete()


REFUSALS = [
    pytest.param(document([entry("/etc/passwd")]), "absolute path", id="absolute"),
    pytest.param(document([entry("../up.py")]), r"escapes the package directory \('..'\)", id="dotdot"),
    pytest.param(document([entry("a/../../up.py")]), "escapes", id="dotdot-inside"),
    pytest.param(document([entry("a\x00b")]), "NUL", id="nul"),
    pytest.param(document([entry("./a.py")]), "normalised", id="dot"),
    pytest.param(document([entry("dev", mode=0o20644)]), "device", id="char-device"),
    pytest.param(document([entry("fifo", mode=0o10644)]), "device, fifo", id="fifo"),
    pytest.param(document([entry("s", mode=0o4755)]), "setuid", id="setuid"),
    pytest.param(document([entry("a.py"), entry("a.py")]), "a.py: appears twice", id="duplicate"),
    pytest.param(document([entry("a"), entry("a/b.py")]), "both a file and a directory", id="file-and-dir"),
    pytest.param(document([entry("a.py", chunk=3)]), "outside the package's chunks", id="bad-chunk"),
    pytest.param(document([entry("a.py", offset=95)]), "outside the package's chunks", id="past-end"),
    pytest.param(document(links=[{"path": "l", "target": "/etc"}]), "outside the package", id="link-absolute"),
    pytest.param(document(links=[{"path": "a/l", "target": "../.."}]), "outside the package", id="link-escapes"),
    pytest.param(
        document(links=[{"path": "x/a", "target": ".."}, {"path": "x/b", "target": "a/../.."}]),
        "goes through a symlink",
        id="link-through-link",
    ),
    pytest.param(
        document(links=[{"path": "d", "target": "sub"}], files=[entry("d/f.py")]), "below the symlink", id="below-link"
    ),
    pytest.param(document(codec="gzip"), "package.codec", id="codec"),
    pytest.param(document(format=2), "format", id="format"),
    pytest.param(document(chunks=[{"digest": "zz", "size": 1, "raw_size": 1}]), "sha256", id="chunk-digest"),
    pytest.param(document(chunks=[{"digest": DIGEST, "size": 1, "raw_size": 5 * 2**20}]), "sizes", id="chunk-size"),
    pytest.param(document([entry("a.py", size=-1)]), ">= 0", id="negative"),
    pytest.param(document([entry("a.py") | {"extra": 1}]), "keys", id="extra-key"),
]


@pytest.mark.parametrize(("doc", "problem"), REFUSALS)
def test_a_bad_manifest_is_refused_naming_the_entry(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as raised:
        parse(doc)
    assert raised.value.field.startswith("package")


def test_the_limits_are_the_bomb_guard() -> None:
    with pytest.raises(InvalidInput, match="has 2 files, more than 1"):
        parse(document([entry("a.py"), entry("b.py")]), PackageLimits(max_files=1))
    with pytest.raises(InvalidInput, match="unpacks to more than 50 bytes"):
        parse(document(), PackageLimits(max_unpacked_bytes=50))
    with pytest.raises(InvalidInput, match="larger than 5 bytes"):
        parse(document(), PackageLimits(max_package_bytes=5))


def test_a_bundle_splits_back_into_manifest_and_chunks() -> None:
    raw = b"print('hi')\n"
    chunk = compress(Codec.LZ4, raw)
    manifest = PackageManifest(
        Codec.LZ4,
        (ChunkRef("b" * 64, len(chunk), len(raw)),),
        (FileEntry("main.py", 0o644, len(raw), 0, 0, "c" * 64),),
        (LinkEntry("alias.py", "main.py"),),
    )
    parsed, _, chunks = split_bundle(pack_bundle(manifest.to_bytes(), [chunk]))
    assert parsed == manifest
    assert chunks == [chunk]
    with pytest.raises(InvalidInput, match="after the last chunk"):
        split_bundle(pack_bundle(manifest.to_bytes(), [chunk, b"x"]))
    with pytest.raises(InvalidInput, match="ends before"):
        split_bundle(pack_bundle(manifest.to_bytes(), [chunk[:-1]]))
    with pytest.raises(InvalidInput, match="not a Nest package"):
        split_bundle(b"\x1f\x8b gzip")
