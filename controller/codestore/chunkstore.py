"""The chunk store: uploaded packages verified whole, then kept as content-addressed chunks and manifests.

`intake` checks everything before it writes anything: the manifest's paths, modes, links and limits
(`nest/contracts/chunks.py`), each chunk's sha256, each chunk's decompressed size against the manifest (the bomb
guard: a chunk can never unpack past its declared size, nor the package past `max_unpacked_bytes`), each file's
sha256, and a `nest.yaml` at the root. Then it stores what it does not have yet:

    <root>/objects/<xx>/<chunk digest>         compressed chunk, as uploaded
    <root>/manifests/<xx>/<package digest>     canonical manifest JSON

Writes go to a temporary name and are renamed into place, so a reader sees a whole file or none. Identical
chunks across versions and functions are stored once. The control API serves both kinds read-only
(`GET /api/v1/code/{manifests,chunks}/{digest}`, range requests included) so that instances on this or another
node fetch them (`runtime/fetch.py`). Deploy time only: nothing here runs on a cold start.
"""

from __future__ import annotations

import collections
import hashlib
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nest.contracts.chunks import (
    DIGEST,
    STORE_FOLDERS,
    PackageLimits,
    PackageManifest,
    decompress,
    load_verified_manifest,
    split_bundle,
    store_path,
)
from nest.contracts.errors import InvalidInput, NotFound
from nest.contracts.manifest import MANIFEST_FILE

if TYPE_CHECKING:
    from pathlib import Path

VERIFY_THREADS = 2


@dataclass(frozen=True, slots=True)
class StoredPackage:
    digest: str
    manifest_text: bytes
    """The package's nest.yaml."""
    files: int
    size: int
    chunks: int
    new_chunks: int
    new_bytes: int

    def summary(self) -> dict[str, int | str]:
        return {
            "digest": self.digest,
            "files": self.files,
            "unpacked_bytes": self.size,
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "new_bytes": self.new_bytes,
        }


class ChunkStore:
    """Chunks and manifests under `root`; `intake` runs in a thread (it hashes and decompresses)."""

    def __init__(self, root: Path, *, limits: PackageLimits | None = None) -> None:
        self._root = root
        self._limits = limits or PackageLimits()
        self._lock = threading.Lock()
        self._pinned: collections.Counter[str] = collections.Counter()
        """Packages stored but not yet recorded as a version: `remove_unreferenced` must keep them."""

    def path_of(self, kind: str, digest: str) -> Path:
        """Where a stored object lives; `NotFound` for an unknown kind, a malformed or an absent digest."""
        if kind not in STORE_FOLDERS or not DIGEST.match(digest):
            raise NotFound(kind, digest)
        path = self._root / store_path(kind, digest)
        if not path.is_file():
            raise NotFound(kind.removesuffix("s"), digest)
        return path

    def has_manifest(self, digest: str) -> bool:
        return DIGEST.match(digest) is not None and (self._root / store_path("manifests", digest)).is_file()

    def intake(self, body: bytes) -> StoredPackage:
        manifest, _, chunks = split_bundle(body, limits=self._limits)
        for index, (ref, chunk) in enumerate(zip(manifest.chunks, chunks, strict=True)):
            if hashlib.sha256(chunk).hexdigest() != ref.digest:
                raise InvalidInput("package", f"chunks[{index}]: sha256 does not match the manifest (upload again)")
        with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as workers:
            sizes = [chunk.raw_size for chunk in manifest.chunks]
            raws = list(workers.map(lambda data, size: decompress(manifest.codec, data, size), chunks, sizes))
        nest_yaml = _verify_files(manifest, memoryview(b"".join(raws)))
        new_chunks = new_bytes = 0
        digest = manifest.digest
        with self._lock:
            for ref, chunk in zip(manifest.chunks, chunks, strict=True):
                if self._put(self._root / store_path("chunks", ref.digest), chunk):
                    new_chunks += 1
                    new_bytes += len(chunk)
            self._put(self._root / store_path("manifests", digest), manifest.to_bytes())
            self._pinned[digest] += 1
        return StoredPackage(
            digest=digest,
            manifest_text=nest_yaml,
            files=len(manifest.files) + len(manifest.links),
            size=manifest.unpacked_bytes,
            chunks=len(manifest.chunks),
            new_chunks=new_chunks,
            new_bytes=new_bytes,
        )

    @staticmethod
    def _put(path: Path, data: bytes) -> bool:
        """Store `data` at `path` unless it is there already; True if it was written."""
        if path.is_file():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.chmod(temporary, 0o444)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return True

    def unpin(self, digest: str) -> None:
        """The package `intake` returned is recorded as a version now (or its deploy failed): GC may judge it."""
        with self._lock:
            self._pinned[digest] -= 1
            if self._pinned[digest] <= 0:
                del self._pinned[digest]

    def remove_unreferenced(self, keep: set[str]) -> int:
        """Delete manifests neither in `keep` nor pinned, and chunks no kept manifest lists; returns how many
        files went. Instances are unaffected: they run from their node's cache."""
        removed = 0
        with self._lock:
            keep = keep | set(self._pinned)
            live: set[str] = set()
            for path in sorted((self._root / STORE_FOLDERS["manifests"]).glob("??/*")):
                if path.name in keep:
                    live.update(chunk.digest for chunk in load_verified_manifest(path.read_bytes()).chunks)
                else:
                    path.unlink()
                    removed += 1
            for path in sorted((self._root / STORE_FOLDERS["chunks"]).glob("??/*")):
                if path.name not in live:
                    path.unlink()
                    removed += 1
        return removed


def _verify_files(manifest: PackageManifest, stream: memoryview) -> bytes:
    """Check every file's sha256 against the raw stream; return the root nest.yaml."""
    starts = manifest.chunk_starts()
    nest_yaml: bytes | None = None
    for entry in manifest.files:
        start = starts[entry.chunk] + entry.offset if manifest.chunks else 0
        content = stream[start : start + entry.size]
        if hashlib.sha256(content).hexdigest() != entry.digest:
            raise InvalidInput("package", f"{entry.path}: sha256 does not match its bytes in the chunks")
        if entry.path == MANIFEST_FILE:
            nest_yaml = bytes(content)
    if nest_yaml is None:
        raise InvalidInput("package", f"has no {MANIFEST_FILE} at its root (run `nest init` to create one)")
    return nest_yaml
