"""Importing a function's modules straight from a `layout: archive` package (`runtime/unpack.py` wrote it).

The node cache holds the package as one file of its chunks *as fetched* (`chunks.bin`, compressed, memory-mapped
here) and an index. `ArchiveFinder` maps module names to byte ranges of the raw stream: `a/b/__init__.py` is
package `a.b`, `a/b/c.py` module `a.b.c`, a directory without `__init__.py` a namespace package, as the path finder
would see the tree. Reading a file decodes the chunk(s) holding it, on first use, and keeps the last two decoded
(`CHUNKS_KEPT`): a cold node stores only the compressed bytes (one write of ~1/5 of the size, no decompression
before the handler can be imported), and a start decodes only the chunks its imports read. Modules get the
`__file__` they would have in a tree (`<code_dir>/a/b/c.py`) and a loader whose `get_data` serves any file of the
package (so `pkgutil.get_data` and `importlib.resources.files()` work), and a path hook lists its directories for
`pkgutil.iter_modules`. Every file that is not a Python source is also a file on disk where the tree would have
it (`runtime/unpack.py`), so `open()` beside `__file__` works, and the path hook's finders load C extensions
(which win over a source of the same module beside them, as in a tree: mypyc-built packages ship both) and
sourceless `.pyc` from there. What needs `layout: tree`: code that reads, lists or runs its own `.py` files as
files, and directory symlinks to Python packages.

Compiled code is cached in the package's sidecar (`runtime/loading.py`), as for the tree: the loader looks the pyc
up by the file's path in the package and checks it against the size the index holds, so a start that finds it
reads (and decodes) no source at all.

Measured (bench_code_fetch, 20 MB of sources in 19 chunks, zstd): 11-14 ms from nothing on the node to the handler
importable over HTTP, where decoding every chunk first took 26-39 ms; docs/architecture.md, Code packages.

An archive written before chunks were kept compressed (`files.bin`, the raw stream) is still read, as one
uncompressed chunk.

The finder sits just before the path finder on `sys.meta_path`: the function's modules shadow installed ones, as
the tree's entry at the front of `sys.path` does, but never builtins or frozen modules.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.abc
import importlib.machinery
import importlib.resources.abc
import importlib.util
import io
import itertools
import marshal
import mmap
import os
import pkgutil
import posixpath
import stat
import sys
import threading
from collections import OrderedDict
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from nest.contracts.chunks import ChunkRef, Codec, decompress
from nest.contracts.errors import InvalidInput
from runtime.loading import BytecodeCache, sidecar_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import CodeType, ModuleType

    from nest.contracts.chunks import Bytes, PackageManifest

ARCHIVE_FILE = "chunks.bin"
"""Every chunk as fetched (verified, still compressed), one after the other in manifest order."""
LEGACY_FILE = "files.bin"
"""The raw stream of every file's bytes: what archives held before their chunks were kept compressed."""
ARCHIVE_INDEX = "index.marshal"
"""`build_index` of the manifest, written with the archive: loading it takes ~0.3 ms where parsing the manifest
and deriving module names took ~5 ms for 1,300 files, on every start (a warm node cache must add <= 2 ms)."""
CHUNKS_KEPT = 2
"""Decoded chunks an instance keeps (~1.1 MiB each): a package's modules lie in path order, so the imports of one
package read one chunk after the other, and a decoded chunk is not needed again once its modules are compiled."""

Refetch: TypeAlias = "Callable[[ChunkRef], Bytes]"
"""Fetches a chunk again from the code store, its digest verified (`runtime/fetch.py`)."""
Chunk = tuple[int, int, int, str]
"""Where a chunk starts in `ARCHIVE_FILE`, its size there, its raw size, its digest (sha256 of what is stored)."""
Index = tuple[dict[str, tuple[int, int]], dict[str, tuple[str | None, bool]], str, tuple[Chunk, ...]]
"""(file -> (start, size) in the raw stream, module name -> (file or None for a namespace package, is a
package), codec, the chunks)"""


def build_index(manifest: PackageManifest) -> Index:
    """Pure: where each file's bytes are, which module each `.py` file (or directory) is, as the path finder
    would see the tree (`__init__.py` makes a package, a directory without one a namespace package), and where
    each chunk is in `ARCHIVE_FILE`."""
    starts = manifest.chunk_starts()
    ranges = {
        entry.path: ((starts[entry.chunk] if starts else 0) + entry.offset, entry.size) for entry in manifest.files
    }
    for link in manifest.links:  # a symlink to a file reads as the file
        target = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        if target in ranges:
            ranges[link.path] = ranges[target]
    modules: dict[str, tuple[str | None, bool]] = {}
    compiled = {_extension_module(path) for path in ranges} - {None}
    for path in sorted(ranges):
        if not path.endswith(".py") or path[:-3].replace("/", ".") in compiled:
            continue  # a module with a C extension beside its source is the extension, as the path finder has it
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            modules[".".join(parts[:-1])] = (path, True)
        elif ".".join(parts) not in modules:
            modules[".".join(parts)] = (path, False)
        for depth in range(1, len(parts)):
            modules.setdefault(".".join(parts[:depth]), (None, True))
    modules.pop("", None)
    chunks = tuple(
        (start, chunk.size, chunk.raw_size, chunk.digest)
        for start, chunk in zip(manifest.chunk_starts(packed=True), manifest.chunks, strict=True)
    )
    return ranges, modules, manifest.codec.value, chunks


def _extension_module(path: str) -> str | None:
    """The module a C extension file is (`a/b/c.cpython-311-x86_64-linux-gnu.so` is `a.b.c`), else None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)].replace("/", ".")
    return None


def write_index(directory: str, manifest: PackageManifest) -> None:
    with open(os.path.join(directory, ARCHIVE_INDEX), "wb") as file:
        marshal.dump(build_index(manifest), file)


def write_all(descriptor: int, data: Bytes, position: int) -> None:
    """All of `data` at `position` of the file (`os.pwrite` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, position)
        view, position = view[written:], position + written


def is_archive(code_dir: str) -> bool:
    return os.path.isfile(os.path.join(code_dir, ARCHIVE_INDEX))


def install(code_dir: str, refetch: Refetch | None = None) -> ArchiveFinder:
    """Read the archive at `code_dir` and put its finder on `sys.meta_path` (before the path finder); `refetch`
    fetches a chunk again (verified) when the node cache's copy no longer matches its digest."""
    with open(os.path.join(code_dir, ARCHIVE_INDEX), "rb") as file:
        index = marshal.loads(file.read())  # marshal.load(file) reads piecemeal: 25x slower
    if len(index) == 2:  # a `LEGACY_FILE` archive: the raw stream, i.e. one chunk stored as is
        ranges, modules = index
        size = os.path.getsize(os.path.join(code_dir, LEGACY_FILE))
        stream = ChunkStream(os.path.join(code_dir, LEGACY_FILE), Codec.NONE, ((0, size, size, ""),))
    else:
        ranges, modules, codec, chunks = index
        stream = ChunkStream(os.path.join(code_dir, ARCHIVE_FILE), Codec(codec), chunks, refetch)
    finder = ArchiveFinder(code_dir, ranges, modules, stream, BytecodeCache(sidecar_for(code_dir)))
    position = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(position, finder)
    sys.path_hooks.insert(0, finder.listing)
    return finder


class ChunkStream:
    """The raw stream of a package read from its chunks in `path`: each verified against its digest and decoded
    on first use (a chunk damaged in the node cache since it was fetched is never imported: ~0.1 ms of sha256 for
    a ~200 KiB zstd chunk), the last `CHUNKS_KEPT` kept. Thread-safe (imports and `get_data` may come from any
    thread)."""

    def __init__(self, path: str, codec: Codec, chunks: Sequence[Chunk], refetch: Refetch | None = None) -> None:
        self.path, self.codec = path, codec
        self._refetch = refetch
        self._chunks = chunks
        self._raw_starts = list(itertools.accumulate((raw_size for _, _, raw_size, _ in chunks), initial=0))[:-1]
        self._decoded: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        with open(path, "rb") as file:
            empty = os.fstat(file.fileno()).st_size == 0
            self._data = b"" if empty else mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._data)  # slices of it are handed to the decoder without a copy

    def forget(self) -> None:
        """Drop the decoded chunks (the runtime calls this once the handler is imported: an instance would
        otherwise keep up to `CHUNKS_KEPT` decoded chunks for its lifetime; a later read decodes again)."""
        with self._lock:
            self._decoded.clear()

    @property
    def decoded(self) -> int:
        """How many decoded chunks are kept now."""
        return len(self._decoded)

    def read(self, start: int, size: int) -> bytes:
        """`size` bytes of the raw stream from `start`."""
        if self.codec is Codec.NONE:  # stored as is: the file is the raw stream
            return bytes(self._data[start : start + size])
        parts, index = [], bisect.bisect_right(self._raw_starts, start) - 1
        while size > 0:
            chunk = self._chunk(index)
            offset = start - self._raw_starts[index]
            part = chunk[offset : offset + size]
            parts.append(part)
            start, size, index = start + len(part), size - len(part), index + 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _chunk(self, index: int) -> bytes:
        with self._lock:
            found = self._decoded.get(index)
            if found is not None:
                self._decoded.move_to_end(index)
                return found
            packed_start, packed_size, raw_size, digest = self._chunks[index]
            packed: Bytes = self._view[packed_start : packed_start + packed_size]
            if hashlib.sha256(packed).hexdigest() != digest:
                damaged = (
                    f"chunk {index} ({digest[:12]}) of {self.path} was damaged in the node cache since it was fetched"
                )
                if self._refetch is None:
                    raise InvalidInput(
                        "package", f"{damaged}; delete that directory and the next start fetches it again"
                    )
                packed = self._refetch(ChunkRef(digest, packed_size, raw_size))
                repaired = "and repaired the node cache" if self._repair(packed_start, packed) else "(not repaired)"
                sys.stderr.write(f"nest: {damaged}: fetched it again {repaired}\n")
            raw = decompress(self.codec, packed, raw_size)
            self._decoded[index] = raw
            while len(self._decoded) > CHUNKS_KEPT:
                self._decoded.popitem(last=False)
            return raw

    def _repair(self, start: int, packed: Bytes) -> bool:
        """Write a chunk fetched again (verified) over its damaged copy, so that later starts find it whole: best
        effort. The cache is read-only: the file is made writable for the write and read-only again (instances
        run as the user that materialised it). A reader meanwhile sees the old bytes or the new, never trusts
        either unverified."""
        try:
            mode = os.stat(self.path).st_mode
            os.chmod(self.path, mode | stat.S_IWUSR)
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    write_all(descriptor, packed, start)
                finally:
                    os.close(descriptor)
            finally:
                os.chmod(self.path, stat.S_IMODE(mode))
        except OSError:
            return False
        return True


class ArchiveFinder(importlib.abc.MetaPathFinder):
    def __init__(
        self,
        code_dir: str,
        ranges: dict[str, tuple[int, int]],
        modules: dict[str, tuple[str | None, bool]],
        stream: ChunkStream,
        bytecode: BytecodeCache,
    ) -> None:
        self.code_dir = code_dir
        self._ranges, self._modules = ranges, modules
        self.stream = stream
        self.bytecode = bytecode

    def read(self, path: str) -> bytes:
        """The bytes of a package file, by absolute path or path inside the package; `FileNotFoundError` if none."""
        start, size = self._range(path)
        return self.stream.read(start, size)

    def code(self, path: str) -> CodeType:
        """The compiled code of a package `.py` file, through the sidecar."""
        relative = os.path.relpath(path, self.code_dir)
        return self.bytecode.code(relative, path, self._range(relative)[1], lambda: self.read(relative))

    def _range(self, path: str) -> tuple[int, int]:
        relative = os.path.relpath(path, self.code_dir) if os.path.isabs(path) else path
        found = self._ranges.get(relative)
        if found is None:
            raise FileNotFoundError(path)
        return found

    def uninstall(self) -> None:
        """Off `sys.meta_path` and `sys.path_hooks` again (tests and benchmarks install many)."""
        sys.meta_path.remove(self)
        sys.path_hooks.remove(self.listing)
        for path, importer in list(sys.path_importer_cache.items()):
            if isinstance(importer, ArchiveDirectory) and importer.finder is self:
                del sys.path_importer_cache[path]

    def listing(self, path: str) -> ArchiveDirectory:
        """A path hook: the importer of one of the package's directories (they exist only in the index), so that
        `pkgutil.iter_modules(package.__path__)` lists its modules as it would in a tree; ImportError elsewhere."""
        relative = os.path.relpath(path, self.code_dir) if os.path.isabs(path) else ".."
        if relative == ".":
            return ArchiveDirectory(self, "", path)
        name = relative.replace(os.sep, ".")
        if relative.startswith("..") or self._modules.get(name, (None, False))[1] is False:
            raise ImportError(f"not a directory of the package at {self.code_dir}: {path}")
        return ArchiveDirectory(self, name, path)

    def is_file(self, relative: str) -> bool:
        return relative in self._ranges

    def listdir(self, relative: str) -> list[str]:
        """The names of the files and directories directly inside `relative` ("" for the top), sorted."""
        prefix = f"{relative}/" if relative else ""
        return sorted({path[len(prefix) :].split("/", 1)[0] for path in self._ranges if path.startswith(prefix)})

    def children(self, package: str) -> list[tuple[str, bool]]:
        """(name, is a package) of the modules directly inside `package` ("" for the top level), sorted."""
        prefix = f"{package}." if package else ""
        return sorted(
            (name[len(prefix) :], is_package)
            for name, (_, is_package) in self._modules.items()
            if name.startswith(prefix) and "." not in name[len(prefix) :]
        )

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        found = self._modules.get(fullname)
        if found is None:
            return None
        file, package = found
        directory = os.path.join(self.code_dir, *fullname.split("."))
        if file is None:
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [directory]
            return spec
        location = os.path.join(self.code_dir, file)
        return importlib.util.spec_from_file_location(
            fullname,
            location,
            loader=ArchiveLoader(self, fullname, location),
            submodule_search_locations=[directory] if package else None,
        )


ON_DISK_LOADERS = (
    (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
)
"""What an archive directory's modules that are files on disk load with (`runtime/unpack.py` writes out every
file but the sources): C extensions, and compiled modules shipped without their source."""


class ArchiveDirectory:
    """The path-entry finder of one directory of an archive (`ArchiveFinder.listing`): what `pkgutil` asks of a
    `sys.path_importer_cache` entry, and what finds the directory's C extensions, which are files on disk (the
    path finder asks it for any module the `ArchiveFinder` on `sys.meta_path` does not know)."""

    def __init__(self, finder: ArchiveFinder, package: str, path: str) -> None:
        self.finder, self._package = finder, package
        self._on_disk = importlib.machinery.FileFinder(path, *ON_DISK_LOADERS)

    def find_spec(self, fullname: str, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.rpartition(".")[0] != self._package:
            return None
        return self.finder.find_spec(fullname, None, target) or self._on_disk.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        """Nothing cached for the archive: the index never changes."""
        self._on_disk.invalidate_caches()

    def iter_modules(self, prefix: str = "") -> Iterator[tuple[str, bool]]:
        """(prefix + name, is a package) per module, as `pkgutil.iter_modules` expects of an importer."""
        listed = set()
        for name, is_package in self.finder.children(self._package):
            listed.add(name)
            yield prefix + name, is_package
        for name, is_package in pkgutil.iter_importer_modules(self._on_disk):  # type: ignore[attr-defined]
            if name not in listed:
                yield prefix + name, is_package


class ArchiveLoader(importlib.abc.SourceLoader):
    def __init__(self, finder: ArchiveFinder, fullname: str, path: str) -> None:
        self._finder, self.name, self.path = finder, fullname, path

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self._finder.read(path)

    def get_code(self, fullname: str) -> CodeType:
        return self._finder.code(self.path)

    def get_resource_reader(self, fullname: str) -> ArchiveResources:
        """What `importlib.resources.files()` reads the module's directory through."""
        return ArchiveResources(self._finder, posixpath.dirname(os.path.relpath(self.path, self._finder.code_dir)))


class ArchiveResources(importlib.resources.abc.TraversableResources):
    def __init__(self, finder: ArchiveFinder, directory: str) -> None:
        self._finder, self._directory = finder, directory

    def files(self) -> ArchivePath:
        return ArchivePath(self._finder, self._directory)


class ArchivePath(importlib.resources.abc.Traversable):
    """A file or directory of an archive, as `importlib.resources` walks it (`relative` inside the package, "" for
    its top). Directories exist only in the index: one is any parent of a file."""

    def __init__(self, finder: ArchiveFinder, relative: str) -> None:
        self._finder, self._relative = finder, relative

    @property
    def name(self) -> str:
        return posixpath.basename(self._relative)

    def is_file(self) -> bool:
        return self._finder.is_file(self._relative)

    def is_dir(self) -> bool:
        return self._relative == "" or any(self._finder.listdir(self._relative))

    def iterdir(self) -> Iterator[ArchivePath]:
        for name in self._finder.listdir(self._relative):
            yield ArchivePath(self._finder, posixpath.join(self._relative, name))

    def joinpath(self, *descendants: str | os.PathLike[str]) -> ArchivePath:
        joined = posixpath.normpath(posixpath.join(self._relative, *(str(os.fspath(part)) for part in descendants)))
        return ArchivePath(self._finder, "" if joined == "." else joined)

    def read_bytes(self) -> bytes:
        return self._finder.read(self._relative)

    def read_text(self, encoding: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8")

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if mode not in ("r", "rb"):
            raise ValueError(f"an archive is read-only: mode {mode!r}")
        data = io.BytesIO(self.read_bytes())
        return data if mode == "rb" else io.TextIOWrapper(data, *args, **kwargs)
