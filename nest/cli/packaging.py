"""Building a function package: the chunked, compressed format of `nest/contracts/chunks.py`.

Same tree, same bytes: files in path order, only their path, content and executable bit recorded, chunk
boundaries chosen by path, so a redeploy of unchanged code is recognised as such and a redeploy with one file
changed uploads chunks the store already has for all the others. Compression (`package.codec` in nest.yaml:
zstd at level 12, or lz4 HC) runs in threads, one chunk each: both codecs release the GIL. Excluded:
version-control and build clutter and the patterns in `.nestignore` (one glob per line, `#` comments). Symlinks
pointing outside the directory are refused; those inside are kept, with a relative target. Empty directories
are not packaged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nest.contracts.chunks import (
    ChunkRef,
    Codec,
    FileEntry,
    Layout,
    LinkEntry,
    PackageManifest,
    compress,
    layout as chunk_layout,
    pack_bundle,
)
from nest.contracts.manifest import MANIFEST_FILE, parse_manifest

MAX_PACKAGE_BYTES = 256 * 1024**2
ALWAYS_EXCLUDED = (".git", "__pycache__", "*.pyc", ".venv", "venv", "node_modules", ".nest", ".mypy_cache")
IGNORE_FILE = ".nestignore"


class PackagingError(Exception):
    """The directory cannot be packaged; the message says which file and why."""


def ignore_patterns(directory: Path) -> list[str]:
    patterns = list(ALWAYS_EXCLUDED)
    ignore = directory / IGNORE_FILE
    if ignore.is_file():
        for line in ignore.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.rstrip("/"))
    return patterns


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    return any(
        fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts)
        for pattern in patterns
    )


def collect_files(directory: Path) -> list[str]:
    """Relative paths to package, sorted; raises `PackagingError` for a symlink leaving the directory."""
    root = directory.resolve()
    patterns = ignore_patterns(directory)
    found: list[str] = []
    for current, dirs, files in os.walk(root):
        relative_dir = os.path.relpath(current, root)
        dirs[:] = sorted(d for d in dirs if not _ignored(os.path.normpath(os.path.join(relative_dir, d)), patterns))
        for name in [*dirs, *files]:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            path = Path(current) / name
            if name in files and _ignored(relative, patterns):
                continue
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise PackagingError(f"{relative}: symlink points outside the function directory ({target})")
            if name in files or path.is_symlink():
                found.append(relative)
    return sorted(found)


@dataclass(frozen=True, slots=True)
class BuiltPackage:
    manifest: PackageManifest
    chunks: list[bytes]
    """Compressed, in manifest order."""

    def bundle(self) -> bytes:
        return pack_bundle(self.manifest.to_bytes(), self.chunks)


def build_chunked(directory: Path, *, codec: Codec, layout: Layout = Layout.TREE, threads: int = 4) -> BuiltPackage:
    """The package of `directory`: files laid out in chunks, each chunk compressed in a thread."""
    files: list[tuple[str, bytes, int]] = []
    links: list[LinkEntry] = []
    for relative in collect_files(directory):
        path = directory / relative
        if path.is_symlink():
            target = os.path.relpath(path.resolve(), path.parent.resolve())
            links.append(LinkEntry(relative, target))
        else:
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            files.append((relative, path.read_bytes(), mode))
    places, sizes = chunk_layout([(relative, len(content)) for relative, content, _ in files])
    stream = b"".join(content for _, content, _ in files)
    raws, position = [], 0
    for size in sizes:
        raws.append(stream[position : position + size])
        position += size
    with ThreadPoolExecutor(max_workers=max(1, threads)) as workers:
        chunks = list(workers.map(lambda raw: compress(codec, raw), raws))
    refs = tuple(
        ChunkRef(hashlib.sha256(chunk).hexdigest(), len(chunk), len(raw))
        for chunk, raw in zip(chunks, raws, strict=True)
    )
    entries = tuple(
        FileEntry(relative, mode, len(content), chunk, offset, hashlib.sha256(content).hexdigest())
        for (relative, content, mode), (chunk, offset) in zip(files, places, strict=True)
    )
    return BuiltPackage(PackageManifest(codec, refs, entries, tuple(links), layout), chunks)


def build_for_deploy(
    directory: Path, *, max_bytes: int = MAX_PACKAGE_BYTES, codec: Codec | None = None
) -> BuiltPackage:
    """The package of `directory`, compressed with `codec` or nest.yaml's `package.codec`; `nest deploy` then
    uploads only the chunks the store lacks (`nest/cli/upload.py`)."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PackagingError(f"{directory}: no nest.yaml here (create one with `nest init`)")
    settings = parse_manifest(manifest_path.read_bytes()).package
    codec = codec or Codec(settings.codec)
    built = build_chunked(directory, codec=codec, layout=Layout(settings.layout))
    if sum(chunk.size for chunk in built.manifest.chunks) > max_bytes:
        raise PackagingError(f"the package is larger than {max_bytes // 1024**2} MiB; add a .nestignore")
    return built


def build_package(directory: Path, *, max_bytes: int = MAX_PACKAGE_BYTES, codec: Codec | None = None) -> bytes:
    """The whole upload body for `directory` (manifest and every chunk), as older Nests take it."""
    return build_for_deploy(directory, max_bytes=max_bytes, codec=codec).bundle()
