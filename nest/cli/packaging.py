"""Building a function package: a deterministic gzip tar of the function directory.

Same tree, same bytes: entries sorted, mtime 0, uid/gid 0, no owner names, gzip without a timestamp, so that a
redeploy of unchanged code is recognised as such. Excluded: version-control and build clutter and the patterns
in `.nestignore` (one glob per line, `#` comments). Symlinks pointing outside the directory are refused.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import tarfile
from pathlib import Path

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


def build_package(directory: Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> bytes:
    """The gzip tar of `directory`; identical trees give identical bytes."""
    if not (directory / "nest.yaml").is_file():
        raise PackagingError(f"{directory}: no nest.yaml here (create one with `nest init`)")
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for relative in collect_files(directory):
            path = directory / relative
            info = tarfile.TarInfo(relative)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_symlink():
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                archive.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with path.open("rb") as file:
                    archive.addfile(info, file)
            if buffer.tell() > max_bytes:
                raise PackagingError(f"the package is larger than {max_bytes // 1024**2} MiB; add a .nestignore")
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise PackagingError(f"the package is larger than {max_bytes // 1024**2} MiB; add a .nestignore")
    return data
