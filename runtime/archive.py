"""Importing a function's modules straight from a `layout: archive` package (`runtime/unpack.py` wrote it).

The node cache holds the package as one file of every file's bytes (`files.bin`, memory-mapped here) and its
manifest. `ArchiveFinder` maps module names to byte ranges: `a/b/__init__.py` is package `a.b`, `a/b/c.py` module
`a.b.c`, a directory without `__init__.py` a namespace package, as the path finder would see the tree. Modules get
the `__file__` they would have in a tree (`<code_dir>/a/b/c.py`) and a loader whose `get_data` serves any file of
the package (so `pkgutil.get_data` works); a plain `open()` of a package file, C extensions and directory symlinks
need `layout: tree`. Compiled code is cached in the package's sidecar (`runtime/loading.py`), as for the tree:
the loader looks the pyc up by the file's path in the package and checks it against the size the index holds,
so a start that finds it reads no source at all.

The finder sits just before the path finder on `sys.meta_path`: the function's modules shadow installed ones, as
the tree's entry at the front of `sys.path` does, but never builtins or frozen modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import marshal
import mmap
import os
import posixpath
import sys
from typing import TYPE_CHECKING

from runtime.loading import BytecodeCache, sidecar_for

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import CodeType, ModuleType

    from nest.contracts.chunks import PackageManifest

ARCHIVE_FILE = "files.bin"
"""The raw stream of every file's bytes, in manifest order."""
ARCHIVE_INDEX = "index.marshal"
"""`build_index` of the manifest, written with the archive: loading it takes ~0.3 ms where parsing the manifest
and deriving module names took ~5 ms for 1,300 files, on every start (a warm node cache must add <= 2 ms)."""

Index = tuple[dict[str, tuple[int, int]], dict[str, tuple[str | None, bool]]]
"""(file -> (start, size) in the stream, module name -> (file or None for a namespace package, is a package))"""


def build_index(manifest: PackageManifest) -> Index:
    """Pure: where each file's bytes are, and which module each `.py` file (or directory) is, as the path finder
    would see the tree: `__init__.py` makes a package, a directory without one a namespace package."""
    starts = manifest.chunk_starts()
    ranges = {
        entry.path: ((starts[entry.chunk] if starts else 0) + entry.offset, entry.size) for entry in manifest.files
    }
    for link in manifest.links:  # a symlink to a file reads as the file
        target = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        if target in ranges:
            ranges[link.path] = ranges[target]
    modules: dict[str, tuple[str | None, bool]] = {}
    for path in sorted(ranges):
        if not path.endswith(".py"):
            continue
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            modules[".".join(parts[:-1])] = (path, True)
        elif ".".join(parts) not in modules:
            modules[".".join(parts)] = (path, False)
        for depth in range(1, len(parts)):
            modules.setdefault(".".join(parts[:depth]), (None, True))
    modules.pop("", None)
    return ranges, modules


def write_index(directory: str, manifest: PackageManifest) -> None:
    with open(os.path.join(directory, ARCHIVE_INDEX), "wb") as file:
        marshal.dump(build_index(manifest), file)


def is_archive(code_dir: str) -> bool:
    return os.path.isfile(os.path.join(code_dir, ARCHIVE_FILE))


def install(code_dir: str) -> ArchiveFinder:
    """Read the archive at `code_dir` and put its finder on `sys.meta_path` (before the path finder)."""
    with open(os.path.join(code_dir, ARCHIVE_INDEX), "rb") as file:
        ranges, modules = marshal.loads(file.read())  # marshal.load(file) reads piecemeal: 25x slower
    finder = ArchiveFinder(code_dir, ranges, modules, BytecodeCache(sidecar_for(code_dir)))
    position = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(position, finder)
    return finder


class ArchiveFinder(importlib.abc.MetaPathFinder):
    def __init__(
        self,
        code_dir: str,
        ranges: dict[str, tuple[int, int]],
        modules: dict[str, tuple[str | None, bool]],
        bytecode: BytecodeCache,
    ) -> None:
        self.code_dir = code_dir
        self._ranges, self._modules = ranges, modules
        self.bytecode = bytecode
        with open(os.path.join(code_dir, ARCHIVE_FILE), "rb") as file:
            empty = os.fstat(file.fileno()).st_size == 0
            self._data = b"" if empty else mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, path: str) -> bytes:
        """The bytes of a package file, by absolute path or path inside the package; `FileNotFoundError` if none."""
        start, size = self._range(path)
        return bytes(self._data[start : start + size])

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


class ArchiveLoader(importlib.abc.SourceLoader):
    def __init__(self, finder: ArchiveFinder, fullname: str, path: str) -> None:
        self._finder, self.name, self.path = finder, fullname, path

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self._finder.read(path)

    def get_code(self, fullname: str) -> CodeType:
        return self._finder.code(self.path)
