"""Taking in an uploaded package safely: validate every member before writing anything, unpack content-addressed.

A package is the gzip tar `nest deploy` builds. Refused, each with the member named: absolute paths, `..`
components, NUL bytes, devices, fifos, hard links, symlinks that resolve outside the tree, duplicates, more than
`max_files` members, more than `max_unpacked_bytes` in total (a bomb guard that also stops reading the
decompressed stream), no `nest.yaml` at the root. The digest covers paths, kinds, executable bits and contents,
not archive order or mtimes, so the same tree always lands in the same `<root>/<xx>/<digest>` directory, which is
made read-only and reused by later deploys of the same code.

Deploy time only; instances read the unpacked tree directly, so there is no extraction on the cold-start path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from nest.contracts.errors import InvalidInput
from nest.contracts.manifest import MANIFEST_FILE

MAX_UNPACKED_BYTES = 512 * 1024**2
MAX_FILES = 20_000


@dataclass(frozen=True, slots=True)
class Package:
    digest: str
    code_dir: Path
    manifest_text: bytes
    files: int
    size: int


class _BoundedReader(io.RawIOBase):
    """Reads the decompressed stream, refusing to go past `limit` bytes (the bomb guard)."""

    def __init__(self, inner: gzip.GzipFile, limit: int) -> None:
        self._inner, self._limit, self._read = inner, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self._read += len(data)
        if self._read > self._limit:
            raise InvalidInput("package", f"unpacks to more than {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def code_dir_for(target_root: Path, digest: str) -> Path:
    return target_root / digest[:2] / digest


def _member_problem(member: tarfile.TarInfo, seen: set[str]) -> str | None:
    name = member.name
    if "\x00" in name:
        return "has a NUL byte in its name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    normalised = posixpath.normpath(name)
    if normalised == ".." or normalised.startswith("../") or ".." in name.split("/"):
        return "escapes the package directory ('..')"
    if normalised in seen:
        return "appears twice"
    if member.islnk():
        return "is a hard link (not allowed)"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "is a device or fifo (not allowed)"
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(normalised), member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            return f"is a symlink to {member.linkname!r}, outside the package"
    elif not (member.isfile() or member.isdir()):
        return "is not a regular file, directory or symlink"
    return None


def _open_archive(archive: bytes, limit: int) -> tarfile.TarFile:
    try:
        stream = _BoundedReader(gzip.GzipFile(fileobj=io.BytesIO(archive)), limit)
        return tarfile.open(fileobj=io.BufferedReader(stream, 1024 * 1024), mode="r|")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidInput("package", f"not a gzip tar archive (build it with `nest deploy`): {exc}") from None


def unpack_package(
    archive: bytes,
    *,
    target_root: Path,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
) -> Package:
    """Validate and unpack `archive` under `target_root`; raise `InvalidInput` naming the first bad member."""
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target_root))
    try:
        entries, size, manifest = _extract(archive, staging, max_unpacked_bytes, max_files)
        digest = _digest(entries)
        final = code_dir_for(target_root, digest)
        if not final.exists():
            _make_read_only(staging)
            final.parent.mkdir(exist_ok=True)
            try:
                os.rename(staging, final)
                final.chmod(0o555)
            except OSError:
                if not final.exists():
                    raise
        return Package(digest, final, manifest, len(entries), size)
    finally:
        if staging.exists():
            _make_writable(staging)
            shutil.rmtree(staging, ignore_errors=True)


def _extract(
    archive: bytes, staging: Path, limit: int, max_files: int
) -> tuple[list[tuple[str, str, bool, str]], int, bytes]:
    """Stream the members into `staging`, checking each before it is written."""
    entries: list[tuple[str, str, bool, str]] = []
    seen: set[str] = set()
    size = 0
    manifest: bytes | None = None
    with _open_archive(archive, limit) as tar:
        try:
            for member in tar:
                problem = _member_problem(member, seen)
                if problem:
                    raise InvalidInput("package", f"{member.name}: {problem}")
                name = posixpath.normpath(member.name)
                seen.add(name)
                if len(seen) > max_files:
                    raise InvalidInput("package", f"has more than {max_files} files")
                size += max(member.size, 0)
                if size > limit:
                    raise InvalidInput("package", f"unpacks to more than {limit} bytes")
                entry, content = _write_member(tar, member, name, staging)
                entries.append(entry)
                if name == MANIFEST_FILE and content is not None:
                    manifest = content
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput("package", f"not a gzip tar archive (build it with `nest deploy`): {exc}") from None
    if manifest is None:
        raise InvalidInput("package", f"has no {MANIFEST_FILE} at its root (run `nest init` to create one)")
    return entries, size, manifest


def _write_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, staging: Path
) -> tuple[tuple[str, str, bool, str], bytes | None]:
    path = staging / name
    if name != ".":
        path.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        path.mkdir(exist_ok=True)
        return (name, "dir", False, ""), None
    if member.issym():
        os.symlink(member.linkname, path)
        return (name, "link", False, hashlib.sha256(member.linkname.encode()).hexdigest()), None
    source = tar.extractfile(member)
    content = source.read() if source is not None else b""
    path.write_bytes(content)
    executable = bool(member.mode & stat.S_IXUSR)
    return (name, "file", executable, hashlib.sha256(content).hexdigest()), content


def _digest(entries: list[tuple[str, str, bool, str]]) -> str:
    digest = hashlib.sha256()
    for name, kind, executable, content_digest in sorted(entries):
        digest.update(f"{name}\0{kind}\0{int(executable)}\0{content_digest}\n".encode())
    return digest.hexdigest()


def _make_read_only(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for file in files:
            path = Path(directory) / file
            if not path.is_symlink():
                path.chmod(0o555 if os.access(path, os.X_OK) else 0o444)
    for directory, _, _ in os.walk(root, topdown=False):
        if Path(directory) != root:  # the root is moved after this; it goes read-only once in place
            Path(directory).chmod(0o555)


def _make_writable(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        Path(directory).chmod(0o755)


def remove_unreferenced(target_root: Path, keep: set[str]) -> int:
    """Delete unpacked trees no version refers to; returns how many went."""
    removed = 0
    for shard in target_root.glob("??"):
        for tree in shard.iterdir():
            if tree.name not in keep:
                _make_writable(tree)
                shutil.rmtree(tree, ignore_errors=True)
                removed += 1
    return removed
