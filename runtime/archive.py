"""Importing a function's modules straight from a `layout: archive` package (`runtime/unpack.py` wrote it).

The node cache holds the package as one file of every file's bytes (`files.bin`, memory-mapped here) and its
manifest. `ArchiveFinder` maps module names to byte ranges: `a/b/__init__.py` is package `a.b`, `a/b/c.py` module
`a.b.c`, a directory without `__init__.py` a namespace package, as the path finder would see the tree. Modules get
the `__file__` they would have in a tree (`<code_dir>/a/b/c.py`) and a loader whose `get_data` serves any file of
the package (so `pkgutil.get_data` works); a plain `open()` of a package file, C extensions and directory symlinks
need `layout: tree`. Source is compiled at import, as with the read-only tree (no bytecode is cached in either).

The finder sits just before the path finder on `sys.meta_path`: the function's modules shadow installed ones, as
the tree's entry at the front of `sys.path` does, but never builtins or frozen modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import mmap
import os
import posixpath
import sys
from typing import TYPE_CHECKING

from nest.contracts.chunks import parse_manifest
from runtime.unpack import ARCHIVE_FILE, ARCHIVE_MANIFEST

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

    from nest.contracts.chunks import PackageManifest


def is_archive(code_dir: str) -> bool:
    return os.path.isfile(os.path.join(code_dir, ARCHIVE_FILE))


def install(code_dir: str) -> ArchiveFinder:
    """Read the archive at `code_dir` and put its finder on `sys.meta_path` (before the path finder)."""
    with open(os.path.join(code_dir, ARCHIVE_MANIFEST), "rb") as file:
        manifest = parse_manifest(file.read())
    finder = ArchiveFinder(code_dir, manifest)
    position = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(position, finder)
    return finder


class ArchiveFinder(importlib.abc.MetaPathFinder):
    def __init__(self, code_dir: str, manifest: PackageManifest) -> None:
        self.code_dir = code_dir
        with open(os.path.join(code_dir, ARCHIVE_FILE), "rb") as file:
            self._data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if manifest.unpacked_bytes else b""
        starts = manifest.chunk_starts()
        self._ranges = {
            entry.path: ((starts[entry.chunk] if starts else 0) + entry.offset, entry.size) for entry in manifest.files
        }
        for link in manifest.links:  # a symlink to a file reads as the file
            target = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
            if target in self._ranges:
                self._ranges[link.path] = self._ranges[target]
        self._modules: dict[str, tuple[str | None, bool]] = {}
        """module name -> (file inside the package or None for a namespace package, is a package)"""
        for path in sorted(self._ranges):
            if not path.endswith(".py"):
                continue
            parts = path[:-3].split("/")
            if parts[-1] == "__init__":
                self._modules[".".join(parts[:-1])] = (path, True)
            elif ".".join(parts) not in self._modules:
                self._modules[".".join(parts)] = (path, False)
            for depth in range(1, len(parts)):
                self._modules.setdefault(".".join(parts[:depth]), (None, True))
        self._modules.pop("", None)

    def read(self, path: str) -> bytes:
        """The bytes of a package file, by absolute path or path inside the package; `FileNotFoundError` if none."""
        relative = os.path.relpath(path, self.code_dir) if os.path.isabs(path) else path
        found = self._ranges.get(relative)
        if found is None:
            raise FileNotFoundError(path)
        start, size = found
        return bytes(self._data[start : start + size])

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
