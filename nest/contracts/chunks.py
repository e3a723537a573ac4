"""The chunked code package: a manifest of files over content-addressed, independently compressed chunks.

The client (`nest/cli/packaging.py`) builds it, the controller (`controller/codestore/chunkstore.py`) verifies
and stores it, the runtime (`runtime/fetch.py`, `runtime/unpack.py`) fetches and materialises it; all three read
this module and nothing else about the format.

Layout: the contents of the regular files, in path order, form one byte stream cut into chunks of 1-4 MiB of raw
bytes. A file sits at (`chunk`, `offset`) and runs on into the following chunks when it is larger than what is
left of its chunk. Each chunk is one zstd or lz4 frame (with its content size in the header), addressed by the
sha256 of its compressed bytes, so any chunk can be fetched, verified and decompressed alone, in parallel.
Chunk boundaries fall after files whose *path* hashes to a cut point (once the chunk holds 1 MiB), never
because of a file's content: changing one file changes its own chunk and leaves the others, hence their
digests, alone, and a redeploy stores only the changed chunks.

The manifest is canonical JSON (sorted keys, no spaces); its sha256 is the package digest:

    {"format": 1, "codec": "zstd", "layout": "tree",
     "chunks": [{"digest": "9f..", "size": 412330, "raw_size": 1297102}, ...],
     "files": [{"path": "main.py", "mode": 420, "size": 52, "chunk": 0, "offset": 0, "digest": "ab.."}, ...],
     "links": [{"path": "lib/current", "target": "v2"}]}

`parse_manifest` refuses anything a malicious client could use against a node, naming the entry: absolute
paths, `..`, NUL, device or fifo modes, setuid bits, duplicates, entries below a symlink, symlinks resolving
outside the tree or through another symlink, ranges outside the chunk stream, more than the file, chunk or
unpacked-size limits (the bomb guard: the sum of the declared raw sizes, which decompression enforces).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import posixpath
import re
import stat
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import lz4.frame
import zstandard

from nest.contracts.errors import InvalidInput

FORMAT = 1
MIN_CHUNK_BYTES = 1024**2
MAX_CHUNK_BYTES = 4 * 1024**2
CUT_MODULUS = 8
"""After 1 MiB, a chunk ends after a file whose path hash is 0 mod 8: with 5-20 KiB sources that adds ~8 files
(~100 KiB), so chunks are ~1.1 MiB, eighteen for a 20 MB package: enough to keep two to eight threads busy."""
ZSTD_LEVEL = 12
"""Build-time level: 19 squeezes Python sources 12% more but compresses 9x slower (2.7 s per 4 MiB here)."""
LZ4_LEVEL = 9
"""LZ4 HC: 28% smaller than the fast mode and decompresses as fast."""
MAX_FILES = 20_000
MAX_UNPACKED_BYTES = 512 * 1024**2
MAX_PATH_BYTES = 1024
MAX_MANIFEST_BYTES = 16 * 1024**2
DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Codec(StrEnum):
    ZSTD = "zstd"
    LZ4 = "lz4"
    NONE = "none"
    """Stored as is: for contents that are compressed already (and the serial baseline of bench_code_fetch)."""


class Layout(StrEnum):
    """How a node keeps the package: `archive` (what `nest deploy` builds unless `package.layout` says otherwise),
    the chunks as fetched in one file that the Python sources are imported from, each chunk decoded when first
    read, and every other file (data, C extensions) written out as a file (`runtime/archive.py`): no file per
    module to create and next to nothing to decode on a cold node (bench_code_fetch: 3-5x faster to the handler
    importable here); `tree`, every file a file, for code that treats its own `.py` files as files (lists them,
    runs one as a script). A manifest without the field is a `tree` (packages built before archives existed)."""

    TREE = "tree"
    ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    digest: str
    """sha256 of the compressed bytes: what is fetched is verified before it is decompressed."""
    size: int
    raw_size: int


@dataclass(slots=True)
class FileEntry:
    """Not frozen, but never changed: a node reads every entry of a package on its cold path, and a frozen
    dataclass sets each field through `object.__setattr__` (1,300 entries: 1.1 ms against 0.3, bench_code_fetch's
    package, while the chunks are in flight and the reader holds the GIL the fetching threads need)."""

    path: str
    mode: int
    """0o644 or 0o755: permission bits only."""
    size: int
    chunk: int
    offset: int
    digest: str


@dataclass(frozen=True, slots=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True, slots=True)
class PackageManifest:
    codec: Codec
    chunks: tuple[ChunkRef, ...]
    files: tuple[FileEntry, ...]
    links: tuple[LinkEntry, ...] = ()
    layout: Layout = Layout.TREE

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "codec": self.codec.value,
            "layout": self.layout.value,
            # explicit dicts: dataclasses.asdict deep-copies, 25 ms for 1,300 files against 2 ms
            "chunks": [{"digest": c.digest, "size": c.size, "raw_size": c.raw_size} for c in self.chunks],
            "files": [
                {
                    "path": f.path,
                    "mode": f.mode,
                    "size": f.size,
                    "chunk": f.chunk,
                    "offset": f.offset,
                    "digest": f.digest,
                }
                for f in self.files
            ],
            "links": [{"path": link.path, "target": link.target} for link in self.links],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def chunk_starts(self, *, packed: bool = False) -> list[int]:
        """Where each chunk begins in the raw stream, or with `packed` in the chunks laid end to end as stored
        (an archive's file, `runtime/archive.py`)."""
        sizes = [chunk.size if packed else chunk.raw_size for chunk in self.chunks]
        return list(itertools.accumulate(sizes, initial=0))[:-1]

    @property
    def unpacked_bytes(self) -> int:
        return sum(chunk.raw_size for chunk in self.chunks)

    def complete(self) -> PackageManifest:
        """Itself (a `ManifestHead` reads its files here)."""
        return self


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """A verified manifest's codec and chunks, read before its files: what fetching needs, in ~20 us instead of
    the ~4 ms that parsing 1,300 file entries takes (bench_code_fetch), so the chunks are in flight while
    `complete` reads the rest (`runtime/unpack.py`)."""

    codec: Codec
    chunks: tuple[ChunkRef, ...]
    document: bytes
    layout: Layout = Layout.TREE
    """Read from the document's end (canonical key order puts it after the files): an archive's chunks are
    stored as fetched, so the fetching threads must know before the files are read."""

    def complete(self) -> PackageManifest:
        manifest = load_verified_manifest(self.document)
        if manifest.chunks != self.chunks or manifest.codec is not self.codec or manifest.layout is not self.layout:
            raise InvalidInput("package", "the manifest's head does not match its document")
        return manifest


@dataclass(frozen=True, slots=True)
class PackageLimits:
    max_files: int = MAX_FILES
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES
    max_package_bytes: int = 256 * 1024**2


def cut_after(path: str) -> bool:
    """Pure: whether a chunk that already holds `MIN_CHUNK_BYTES` may end after this file (path-only)."""
    return hashlib.sha256(path.encode()).digest()[0] % CUT_MODULUS == 0


def layout(files: list[tuple[str, int]]) -> tuple[list[tuple[int, int]], list[int]]:
    """Pure: for files (path, size) in stream order, each one's (chunk, offset) and each chunk's raw size.

    E.g. three files of 3, 2 and 1 MiB, none a cut point: (0, 0), (0, 3 MiB), (1, 1 MiB); chunks 4 and 2 MiB.
    """
    places: list[tuple[int, int]] = []
    sizes: list[int] = []
    fill = 0
    for path, size in files:
        if fill == MAX_CHUNK_BYTES:
            sizes.append(fill)
            fill = 0
        places.append((len(sizes), fill))
        fill += size
        while fill > MAX_CHUNK_BYTES:
            sizes.append(MAX_CHUNK_BYTES)
            fill -= MAX_CHUNK_BYTES
        if fill >= MIN_CHUNK_BYTES and cut_after(path):
            sizes.append(fill)
            fill = 0
    if fill:
        sizes.append(fill)
    return places, sizes


Bytes = bytes | bytearray | memoryview


def compress(codec: Codec, raw: bytes) -> bytes:
    if codec is Codec.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)
    if codec is Codec.NONE:
        return raw
    return bytes(lz4.frame.compress(raw, compression_level=LZ4_LEVEL, store_size=True, content_checksum=False))


def decompress(codec: Codec, data: Bytes, raw_size: int) -> bytes:
    """One chunk's raw bytes; never more than `raw_size` (the bomb guard), else `InvalidInput`."""
    try:
        if codec is Codec.NONE:
            raw = data
        elif codec is Codec.ZSTD:
            declared = zstandard.frame_content_size(data)
            if declared != raw_size:
                raise InvalidInput("package", f"a {codec} chunk declares {declared} bytes, the manifest {raw_size}")
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_size)
        else:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            raw = decompressor.decompress(data, max_length=raw_size)
            if not decompressor.eof:
                raise InvalidInput("package", f"an lz4 chunk unpacks to more than its {raw_size} bytes")
    except (zstandard.ZstdError, RuntimeError) as exc:
        raise InvalidInput("package", f"a chunk is not a valid {codec} frame: {exc}") from None
    if len(raw) != raw_size:
        raise InvalidInput("package", f"a chunk unpacks to {len(raw)} bytes, the manifest says {raw_size}")
    return bytes(raw)


def decompress_into(codec: Codec, data: Bytes, raw_size: int, scratch: memoryview) -> Bytes:
    """One chunk's raw bytes, checked as `decompress` checks them, but decoded into `scratch` (at least `raw_size`
    bytes, reused by the caller): zstd decodes a frame that declares its content size in one pass straight into it,
    lz4 in pieces copied into it (`_lz4_into`); `none` returns the input itself.

    Why: on this VM a page of fresh memory costs a fault (~2 us a 4 KiB page), so decoding 20 MB into new buffers
    took 17 ms against 8 ms into one reused buffer (bench_code_fetch's cold start is that loop, in 2-4 threads).
    """
    if codec is Codec.NONE:
        if len(data) != raw_size:
            raise InvalidInput("package", f"a chunk holds {len(data)} bytes, the manifest says {raw_size}")
        return data
    if codec is Codec.LZ4:
        return _lz4_into(data, raw_size, scratch)
    try:
        declared = zstandard.frame_content_size(data)
        if declared != raw_size:
            raise InvalidInput("package", f"a {codec} chunk declares {declared} bytes, the manifest {raw_size}")
        output = scratch[:raw_size]
        decoder = getattr(_PER_THREAD, "zstd", None)
        if decoder is None:  # one per thread: a decompressor's context is not shared safely
            decoder = _PER_THREAD.zstd = zstandard.ZstdDecompressor()
        with decoder.stream_reader(data) as reader:  # a whole frame of known size: one pass, no window buffer
            size = reader.readinto(output)
    except zstandard.ZstdError as exc:
        raise InvalidInput("package", f"a chunk is not a valid {codec} frame: {exc}") from None
    if size != raw_size:
        raise InvalidInput("package", f"a chunk unpacks to {size} bytes, the manifest says {raw_size}")
    return output


def check_frame(codec: Codec, data: Bytes, raw_size: int) -> None:
    """That a chunk's frame header declares the manifest's `raw_size`, without decoding it (microseconds): what
    an archive stores compressed is checked so when it arrives, and decoded (with every check of `decompress`)
    only when a module is read from it."""
    try:
        if codec is Codec.NONE:
            declared = len(data)
        elif codec is Codec.ZSTD:
            declared = zstandard.frame_content_size(data)
        else:
            declared = lz4.frame.get_frame_info(data)["content_size"]
    except (zstandard.ZstdError, RuntimeError, KeyError) as exc:
        raise InvalidInput("package", f"a chunk is not a valid {codec} frame: {exc}") from None
    if declared != raw_size:
        raise InvalidInput("package", f"a {codec} chunk declares {declared} bytes, the manifest says {raw_size}")


def _lz4_into(data: Bytes, raw_size: int, scratch: memoryview) -> memoryview:
    """lz4's binding decodes into new buffers only: pieces of `LZ4_PIECE` bytes, each copied into `scratch` while
    it is in the CPU cache (6.5 ms for 20 MB here, against 16 ms decoding each ~1 MiB chunk into a new buffer)."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    position, pending = 0, data
    try:
        while not decompressor.eof:
            piece, pending = decompressor.decompress(pending, max_length=LZ4_PIECE), b""
            if position + len(piece) > raw_size:
                raise InvalidInput("package", f"an lz4 chunk unpacks to more than its {raw_size} bytes")
            if not piece and not decompressor.eof:
                raise InvalidInput("package", "an lz4 chunk ends before its frame does")
            scratch[position : position + len(piece)] = piece
            position += len(piece)
    except RuntimeError as exc:
        raise InvalidInput("package", f"a chunk is not a valid lz4 frame: {exc}") from None
    if position != raw_size:
        raise InvalidInput("package", f"a chunk unpacks to {position} bytes, the manifest says {raw_size}")
    return scratch[:raw_size]


LZ4_PIECE = 256 * 1024
_PER_THREAD = threading.local()


def parse_manifest(data: bytes, *, limits: PackageLimits | None = None) -> PackageManifest:
    """The manifest in `data`, checked against the rules in the module docstring; `InvalidInput` names the entry."""
    limits = limits or PackageLimits()
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput("package", f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise InvalidInput("package", f"the manifest is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInput("package", f"the manifest is not format {FORMAT} (build it with `nest deploy`)")
    try:
        codec = Codec(str(document.get("codec")))
    except ValueError:
        raise InvalidInput("package.codec", f"{document.get('codec')!r} is not one of zstd, lz4, none") from None
    try:
        layout = Layout(str(document.get("layout", Layout.TREE)))
    except ValueError:
        raise InvalidInput("package.layout", f"{document.get('layout')!r} is not one of tree, archive") from None
    chunks = tuple(_chunk(index, raw) for index, raw in enumerate(_list(document, "chunks")))
    files = tuple(_file(index, raw) for index, raw in enumerate(_list(document, "files")))
    links = tuple(_link(index, raw) for index, raw in enumerate(_list(document, "links")))
    manifest = PackageManifest(codec, chunks, files, links, layout)
    _check_sizes(manifest, limits)
    _check_tree(manifest)
    return manifest


_FILE_FIELDS = operator.itemgetter("path", "mode", "size", "chunk", "offset", "digest")


def load_verified_manifest(data: bytes) -> PackageManifest:
    """A manifest whose sha256 matched a digest the controller handed out: the controller validated it at deploy
    (`parse_manifest`), so only its structure is read here. 1 ms instead of 18 for 1,300 files, on the cold path."""
    try:
        document = json.loads(data)
        return PackageManifest(
            Codec(document["codec"]),
            tuple(ChunkRef(**chunk) for chunk in document["chunks"]),
            tuple(FileEntry(*_FILE_FIELDS(entry)) for entry in document["files"]),
            tuple(LinkEntry(**link) for link in document["links"]),
            Layout(document.get("layout", Layout.TREE)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("package", f"the manifest is not a Nest package manifest: {exc}") from None


_CANONICAL_HEAD = b'{"chunks":'
_CODEC_KEY = b',"codec":"'
_LAYOUT_KEY = b',"layout":"'


def read_verified_manifest(data: bytes) -> ManifestHead | PackageManifest:
    """A manifest whose sha256 matched a digest the controller handed out, its files left to `complete()` when it
    is canonical JSON (sorted keys: the chunk list, then the codec, come first); any other, read whole."""
    end = data.find(_CODEC_KEY) if data.startswith(_CANONICAL_HEAD) else -1
    codec_end = data.find(b'"', end + len(_CODEC_KEY)) if end > 0 else -1
    if codec_end < 0:
        return load_verified_manifest(data)
    # Inside a string a quote is escaped, so `,"layout":"` is the key itself; the last one, as files come first.
    layout_at = data.rfind(_LAYOUT_KEY)
    layout_end = data.find(b'"', layout_at + len(_LAYOUT_KEY)) if layout_at > 0 else -1
    try:
        chunks = tuple(ChunkRef(**chunk) for chunk in json.loads(data[len(_CANONICAL_HEAD) : end]))
        codec = Codec(data[end + len(_CODEC_KEY) : codec_end].decode())
        layout = Layout(data[layout_at + len(_LAYOUT_KEY) : layout_end].decode()) if layout_end > 0 else Layout.TREE
    except (ValueError, KeyError, TypeError):
        return load_verified_manifest(data)  # not what it looked like: the whole document says why
    return ManifestHead(codec, chunks, data, layout)


def _list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise InvalidInput("package", f"manifest {key} is not a list")
    return value


def _fields(where: str, raw: Any, spec: dict[str, type]) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) != set(spec):
        raise InvalidInput("package", f"{where}: expected exactly the keys {sorted(spec)}")
    for key, kind in spec.items():
        value = raw[key]
        negative = isinstance(value, int) and value < 0
        if not isinstance(value, kind) or isinstance(value, bool) or negative:
            raise InvalidInput("package", f"{where}.{key}: {value!r} is not a {kind.__name__} >= 0")
    return raw


def _chunk(index: int, raw: Any) -> ChunkRef:
    fields = _fields(f"chunks[{index}]", raw, {"digest": str, "size": int, "raw_size": int})
    if not DIGEST.match(fields["digest"]):
        raise InvalidInput("package", f"chunks[{index}].digest: not a sha256 hex digest")
    if not 0 < fields["raw_size"] <= MAX_CHUNK_BYTES or not 0 < fields["size"] <= 2 * MAX_CHUNK_BYTES:
        raise InvalidInput("package", f"chunks[{index}]: sizes outside 1..{MAX_CHUNK_BYTES} bytes")
    return ChunkRef(fields["digest"], fields["size"], fields["raw_size"])


def _file(index: int, raw: Any) -> FileEntry:
    spec = {"path": str, "mode": int, "size": int, "chunk": int, "offset": int, "digest": str}
    fields = _fields(f"files[{index}]", raw, spec)
    path = _path(f"files[{index}]", fields["path"])
    mode = fields["mode"]
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise InvalidInput("package", f"{path}: is a device, fifo or socket (mode {mode:o}; not allowed)")
    if mode & ~0o777 & ~stat.S_IFREG or mode & 0o777 not in (0o644, 0o755):
        raise InvalidInput("package", f"{path}: mode {mode:o} is not 644 or 755 (no setuid, setgid or sticky)")
    if not DIGEST.match(fields["digest"]):
        raise InvalidInput("package", f"{path}: digest is not a sha256 hex digest")
    return FileEntry(path, mode & 0o777, fields["size"], fields["chunk"], fields["offset"], fields["digest"])


def _link(index: int, raw: Any) -> LinkEntry:
    fields = _fields(f"links[{index}]", raw, {"path": str, "target": str})
    path = _path(f"links[{index}]", fields["path"])
    target = fields["target"]
    if not target or "\x00" in target or target.startswith("/") or len(target.encode()) > MAX_PATH_BYTES:
        raise InvalidInput("package", f"{path}: symlink to {target!r}, outside the package")
    return LinkEntry(path, target)


def _path(where: str, path: str) -> str:
    if "\x00" in path:
        raise InvalidInput("package", f"{where}: {path!r} has a NUL byte in its name")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InvalidInput("package", f"{path}: is an absolute path")
    parts = path.split("/")
    if ".." in parts:
        raise InvalidInput("package", f"{path}: escapes the package directory ('..')")
    if not path or path != posixpath.normpath(path) or "." in parts or "\\" in path:
        raise InvalidInput("package", f"{where}: {path!r} is not a normalised relative path")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidInput("package", f"{where}: path longer than {MAX_PATH_BYTES} bytes")
    return path


def _check_sizes(manifest: PackageManifest, limits: PackageLimits) -> None:
    entries = len(manifest.files) + len(manifest.links)
    if entries > limits.max_files:
        raise InvalidInput("package", f"has {entries} files, more than {limits.max_files}")
    if manifest.unpacked_bytes > limits.max_unpacked_bytes:
        raise InvalidInput("package", f"unpacks to more than {limits.max_unpacked_bytes} bytes")
    if sum(chunk.size for chunk in manifest.chunks) > limits.max_package_bytes:
        raise InvalidInput("package", f"is larger than {limits.max_package_bytes} bytes")
    starts, total = manifest.chunk_starts(), manifest.unpacked_bytes
    for entry in manifest.files:
        if not manifest.chunks:
            inside = entry.size == entry.chunk == entry.offset == 0
        else:
            inside = entry.chunk < len(manifest.chunks) and entry.offset <= manifest.chunks[entry.chunk].raw_size
            inside = inside and starts[entry.chunk] + entry.offset + entry.size <= total
        if not inside:
            raise InvalidInput("package", f"{entry.path}: its bytes lie outside the package's chunks")


def _check_tree(manifest: PackageManifest) -> None:
    kinds: dict[str, str] = {}
    for path, kind in [(f.path, "file") for f in manifest.files] + [(link.path, "link") for link in manifest.links]:
        if path in kinds:
            raise InvalidInput("package", f"{path}: appears twice")
        kinds[path] = kind
    directories = {posixpath.dirname(path) for path in kinds}
    for parent in list(directories):
        while parent:
            directories.add(parent)
            parent = posixpath.dirname(parent)
    for path in kinds:
        if path in directories:
            raise InvalidInput("package", f"{path}: is both a file and a directory")
        parent = posixpath.dirname(path)
        while parent:
            if kinds.get(parent) == "link":
                raise InvalidInput("package", f"{path}: lies below the symlink {parent} (not allowed)")
            parent = posixpath.dirname(parent)
    for link in manifest.links:
        _check_link(link, kinds)


def _check_link(link: LinkEntry, kinds: dict[str, str]) -> None:
    """Resolve the target a component at a time: it must stay in the tree and not pass through a symlink
    before a `..` (the kernel would follow the link, a lexical normpath would not)."""
    stack = link.path.split("/")[:-1]
    for part in link.target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise InvalidInput("package", f"{link.path}: symlink to {link.target!r}, outside the package")
            if kinds.get("/".join(stack)) == "link":
                raise InvalidInput("package", f"{link.path}: symlink to {link.target!r} goes through a symlink")
            stack.pop()
        else:
            stack.append(part)


STORE_FOLDERS = {"chunks": "objects", "manifests": "manifests"}


def store_path(kind: str, digest: str) -> str:
    """Where the code store keeps an object, relative to its root: `objects/9f/9f..` for a chunk. The controller
    writes this layout; an instance on the same node reads it directly (`file://` code URL, runtime/fetch.py)."""
    return f"{STORE_FOLDERS[kind]}/{digest[:2]}/{digest}"


BUNDLE_MAGIC = b"NESTPKG1"
BUNDLE_MEDIA_TYPE = "application/vnd.nest.package"


def pack_bundle(manifest: bytes, chunks: list[bytes]) -> bytes:
    """The upload body of `nest deploy`: magic, 8-byte manifest length, manifest, chunks in manifest order."""
    return b"".join([BUNDLE_MAGIC, len(manifest).to_bytes(8, "big"), manifest, *chunks])


def split_bundle(body: bytes, *, limits: PackageLimits | None = None) -> tuple[PackageManifest, bytes, list[bytes]]:
    """The checked manifest, its bytes and the chunks of an upload body; `InvalidInput` if it does not add up.
    Digests are not checked here (the store does, before it keeps anything)."""
    head = len(BUNDLE_MAGIC) + 8
    if not body.startswith(BUNDLE_MAGIC) or len(body) < head:
        raise InvalidInput("package", "not a Nest package (build and upload it with `nest deploy`)")
    length = int.from_bytes(body[len(BUNDLE_MAGIC) : head], "big")
    if length > MAX_MANIFEST_BYTES or head + length > len(body):
        raise InvalidInput("package", f"the manifest length {length} does not fit the upload")
    manifest_bytes = body[head : head + length]
    manifest = parse_manifest(manifest_bytes, limits=limits)
    chunks, position = [], head + length
    for index, chunk in enumerate(manifest.chunks):
        if position + chunk.size > len(body):
            raise InvalidInput("package", f"chunks[{index}]: the upload ends before this chunk")
        chunks.append(body[position : position + chunk.size])
        position += chunk.size
    if position != len(body):
        raise InvalidInput("package", f"{len(body) - position} bytes after the last chunk")
    return manifest, manifest_bytes, chunks
