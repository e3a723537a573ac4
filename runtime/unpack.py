"""Materialising a code package once per node: `<cache>/<xx>/<digest>`, a plain read-only directory tree.

Why a directory and not an in-memory archive: an import from a directory is Python's fastest path (and `__file__`,
`open(relative)`, C extensions and `importlib.resources` work unchanged), and the tree is written once per node,
then reused by every later start of the version, which costs one `stat` (bench_code_fetch: warm cache < 0.1 ms).
Writing it is not the bottleneck either: there is no archive to parse (the manifest says where every file's bytes
are), each chunk is decompressed and its files written by one thread with `os.open/os.write` straight from a
memoryview of the chunk, and both codecs and the writes release the GIL. bench_code_fetch measures the whole
path against tarfile extraction of the same tree. `layout: archive` (the default) skips the source files and most
decoding: each chunk is written as fetched into one file (its frame header checked against the manifest's size),
and decoded only when a module is read from it (`runtime/archive.py`); only the files that are not Python sources
are written out, from the chunks holding them, decoded here.

Safety: the tree is built in a temporary directory beside its final name and renamed into place, so a reader sees
all of it or none; two instances starting the same version at once serialise on a lock file next to it (the
second finds the tree and only waited); a chunk reaches the decompressor only after `runtime/fetch.py` verified
its digest; paths come from a validated manifest, files are opened with O_NOFOLLOW|O_EXCL and symlinks are made
last, so no write goes through a link.
"""

from __future__ import annotations

import fcntl
import functools
import os
import posixpath
import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nest.contracts.chunks import Codec, Layout, check_frame, decompress, decompress_into
from runtime.archive import ARCHIVE_FILE, ARCHIVE_INDEX, write_all, write_index

if TYPE_CHECKING:
    from collections.abc import Callable

    from nest.contracts.chunks import Bytes, ChunkRef, LinkEntry, ManifestHead, PackageManifest


THREADS = 4
"""Chunks in flight at once: fetching waits on the network, so more than the two cores here pays (measured)."""
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHARED_WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class ChunkSource(Protocol):
    """Where a package comes from (`runtime/fetch.py`'s `HttpChunkSource`; a dict-backed fake in tests)."""

    def manifest(self, digest: str) -> ManifestHead | PackageManifest:
        """The verified manifest, or its head (codec and chunks) when its files are read later, by `complete()`."""
        ...

    def chunk(self, ref: ChunkRef, buffer: bytearray | None = None) -> Bytes:
        """The chunk's compressed bytes, digest already verified; received into `buffer` (at least `ref.size`
        bytes, reused by the caller from chunk to chunk) if the source can."""
        ...


@dataclass(frozen=True, slots=True)
class Materialised:
    code_dir: Path
    fetch_ms: float = 0.0
    """Manifest and chunks over the network (overlapping the first decompressions), or waiting for another
    instance that was materialising the same package."""
    unpack_ms: float = 0.0
    """Decompressing and writing after the last chunk arrived, and the rename into place."""
    cached: bool = True


@dataclass(slots=True)
class _Piece:
    path: str
    file_offset: int
    chunk_offset: int
    length: int
    mode: int
    shared: bool
    """The file spans chunks: it was created by the main thread and is written with pwrite."""


@dataclass(slots=True)
class _Plan:
    pieces: list[list[_Piece]]
    shared: dict[str, int] = field(default_factory=dict)
    """Files spanning chunks -> mode, made read-only once every piece is written."""


def cache_dir_for(cache_root: Path, digest: str) -> Path:
    return cache_root / digest[:2] / digest


def ensure_package(code_dir: Path, digest: str, source: ChunkSource, *, threads: int = THREADS) -> Materialised:
    """The package's tree at `code_dir`, fetched and unpacked unless it is there already."""
    if code_dir.is_dir():
        return Materialised(code_dir)
    started = time.monotonic()
    code_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(code_dir.parent / f".{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if code_dir.is_dir():  # another instance did it while we waited
            return Materialised(code_dir, fetch_ms=_ms_since(started))
        return _materialise(code_dir, digest, source, threads, started)
    finally:
        os.close(lock)  # releases the lock


def _materialise(code_dir: Path, digest: str, source: ChunkSource, threads: int, started: float) -> Materialised:
    head = source.manifest(digest)
    fetched: list[float] = [time.monotonic()]
    staging = _Staging(code_dir.parent, f".{digest[:12]}-")
    try:
        try:
            _run(head, source, threads, functools.partial(staging.prepare, head), fetched)
        finally:
            staging.close()
        staging.seal_as(code_dir)
    except BaseException:
        staging.remove()
        raise
    fetch_ms = (max(fetched) - started) * 1000
    return Materialised(code_dir, round(fetch_ms, 2), round(_ms_since(started) - fetch_ms, 2), cached=False)


@dataclass(slots=True)
class _Staging:
    """The directory a package is built in beside its final name, and what writes into it: both made by `prepare`
    while the first chunks are in flight (on this disk a directory costs ~0.3 ms, reading 1,300 file entries and
    writing an archive's index ~4 ms)."""

    parent: Path
    prefix: str
    directory: Path | None = None
    writer: _ArchiveWriter | _TreeWriter | None = None

    def prepare(self, head: ManifestHead | PackageManifest) -> Callable[[int, Bytes], None]:
        self.directory = staging = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
        manifest = head.complete()
        archive = manifest.layout is Layout.ARCHIVE
        self.writer = writer = _ArchiveWriter(manifest, staging) if archive else _TreeWriter(manifest, staging)
        writer.prepare()
        return writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def seal_as(self, code_dir: Path) -> None:
        assert self.writer is not None, "sealed before prepare"
        assert self.directory is not None, "sealed before prepare"
        self.writer.seal()
        os.rename(self.directory, code_dir)

    def remove(self) -> None:
        if self.directory is not None:
            _make_writable(self.directory)
            shutil.rmtree(self.directory, ignore_errors=True)


def _run(
    head: ManifestHead | PackageManifest,
    source: ChunkSource,
    threads: int,
    prepare: Callable[[], Callable[[int, Bytes], None]],
    fetched: list[float],
) -> None:
    """Fetch, decompress and write every chunk in `threads` workers, started as soon as the chunk list is known,
    while this thread runs `prepare` (the manifest's files, the archive's index or the tree's directories): no
    chunk is written before that is done. Each worker reuses one buffer for what it receives and one for what it
    decompresses (fresh memory costs a page fault per 4 KiB: `decompress_into`). The first failure cancels the
    chunks not started yet and is raised."""
    prepared, abandoned = threading.Event(), threading.Event()
    local = threading.local()
    chunks, codec = head.chunks, head.codec
    packed = head.layout is Layout.ARCHIVE or codec is Codec.NONE  # an archive keeps its chunks as fetched
    most = max((ref.size for ref in chunks), default=0)
    most_raw = max((ref.raw_size for ref in chunks), default=0)
    writer: list[Callable[[int, Bytes], None]] = []

    def one(index: int) -> None:
        ref = chunks[index]
        if not hasattr(local, "received"):
            local.received = bytearray(most)
            local.raw = memoryview(bytearray(0 if packed else most_raw))
        data = source.chunk(ref, local.received)
        fetched.append(time.monotonic())
        if packed:
            check_frame(codec, data, ref.raw_size)  # decoded when read (`runtime/archive.py`)
        else:
            data = decompress_into(codec, data, ref.raw_size, local.raw)
        prepared.wait()
        if not abandoned.is_set():
            writer[0](index, data)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as workers:
        futures = [workers.submit(one, index) for index in range(len(chunks))]
        try:
            writer.append(prepare())
            prepared.set()
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # raises a failure
        except BaseException:
            abandoned.set()
            prepared.set()
            for future in futures:
                future.cancel()
            raise


class _ArchiveWriter:
    """One file, `ARCHIVE_FILE`, sized up front; each chunk lands at its offset as fetched, with a single pwrite:
    no file per module and nothing decoded before the handler can be imported (`runtime/archive.py` decodes a
    chunk when a module is read from it), which is what makes this layout fast on a cold node.

    The package's other files (data, C extensions, compiled files shipped without source) and the symlinks to
    them are also written out as files, as the tree would have them: `open()` beside `__file__`, `ctypes` and
    the extension loader need a real file. Only the chunks holding such a file are decoded here."""

    def __init__(self, manifest: PackageManifest, staging: Path) -> None:
        self._manifest, self._staging = manifest, staging
        self._descriptor = os.open(staging / ARCHIVE_FILE, _WRITE, 0o600)
        os.ftruncate(self._descriptor, sum(chunk.size for chunk in manifest.chunks))
        self._starts = manifest.chunk_starts(packed=True)
        self._plan = _Plan([])

    def prepare(self) -> None:
        write_index(str(self._staging), self._manifest)
        self._plan = _prepare(self._manifest, self._staging, only=on_disk)

    def __call__(self, index: int, packed: Bytes) -> None:
        write_all(self._descriptor, packed, self._starts[index])
        pieces = self._plan.pieces[index]
        if pieces:
            raw = decompress(self._manifest.codec, packed, self._manifest.chunks[index].raw_size)
            _write_pieces(self._staging, pieces, raw)

    def close(self) -> None:
        os.close(self._descriptor)

    def seal(self) -> None:
        _link(self._staging, self._manifest, only=on_disk)
        for name in (ARCHIVE_FILE, ARCHIVE_INDEX):
            os.chmod(self._staging / name, 0o444)
        _seal(self._staging, self._plan)


def on_disk(path: str) -> bool:
    """Whether the archive layout writes this package file out as a file: all but Python sources."""
    return not path.endswith(".py")


def _prepare(manifest: PackageManifest, staging: Path, *, only: Callable[[str], bool] | None = None) -> _Plan:
    """Directories, empty files and files spanning chunks made up front; each chunk's pieces listed. `only`: the
    files (and symlinks) to write, every one by default."""
    files = [entry for entry in manifest.files if only is None or only(entry.path)]
    paths = [entry.path for entry in files] + [link.path for link in _links(manifest, only)]
    for directory in sorted({os.path.dirname(path) for path in paths}):
        if directory:
            os.makedirs(staging / directory, mode=0o755, exist_ok=True)
    plan = _Plan([[] for _ in manifest.chunks])
    for entry in files:
        if entry.size == 0:
            os.close(os.open(staging / entry.path, _WRITE, _read_only(entry.mode)))
            continue
        chunk, offset, done = entry.chunk, entry.offset, 0
        shared = entry.size > manifest.chunks[chunk].raw_size - offset
        if shared:
            os.close(os.open(staging / entry.path, _WRITE, 0o600))
            plan.shared[entry.path] = entry.mode
        while done < entry.size:
            length = min(entry.size - done, manifest.chunks[chunk].raw_size - offset)
            plan.pieces[chunk].append(_Piece(entry.path, done, offset, length, _read_only(entry.mode), shared))
            done += length
            chunk, offset = chunk + 1, 0
    return plan


class _TreeWriter:
    """The tree layout: `prepare` makes the directories, empty files and files spanning chunks and lists each
    chunk's pieces; then each chunk's files are written by the worker that decompressed it."""

    def __init__(self, manifest: PackageManifest, staging: Path) -> None:
        self._manifest, self._staging = manifest, staging
        self._plan = _Plan([])

    def prepare(self) -> None:
        self._plan = _prepare(self._manifest, self._staging)

    def __call__(self, index: int, raw: Bytes) -> None:
        _write_pieces(self._staging, self._plan.pieces[index], raw)

    def close(self) -> None:
        """Nothing held open: each file is closed once written."""

    def seal(self) -> None:
        """Symlinks last (no write can go through one), then read-only."""
        _link(self._staging, self._manifest)
        _seal(self._staging, self._plan)


def _write_pieces(staging: Path, pieces: list[_Piece], raw: Bytes) -> None:
    """One chunk's pieces of files, from its raw bytes."""
    view = memoryview(raw)
    for piece in pieces:
        # a file spanning chunks exists already (`_prepare`); any other is created here, read-only
        flags = _SHARED_WRITE if piece.shared else _WRITE
        descriptor = os.open(staging / piece.path, flags, piece.mode)
        try:
            write_all(descriptor, view[piece.chunk_offset : piece.chunk_offset + piece.length], piece.file_offset)
        finally:
            os.close(descriptor)


def _links(manifest: PackageManifest, only: Callable[[str], bool] | None) -> list[LinkEntry]:
    """The symlinks to make: all, or those whose target (resolved inside the package) is one of `only`'s files."""
    if only is None:
        return list(manifest.links)
    return [
        link
        for link in manifest.links
        if only(posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target)))
    ]


def _link(staging: Path, manifest: PackageManifest, *, only: Callable[[str], bool] | None = None) -> None:
    for link in _links(manifest, only):
        os.symlink(link.target, staging / link.path)


def _seal(staging: Path, plan: _Plan) -> None:
    """Read-only: executable files 0555, others 0444 (set at creation, except files spanning chunks), dirs 0555."""
    for path, mode in plan.shared.items():
        os.chmod(staging / path, _read_only(mode))
    for directory, _, _ in os.walk(staging, topdown=False):
        os.chmod(directory, 0o555)


def _make_writable(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        os.chmod(directory, 0o755)


def _read_only(mode: int) -> int:
    return 0o555 if mode & 0o111 else 0o444


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
