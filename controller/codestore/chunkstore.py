"""The chunk store: uploaded packages verified whole, then kept as content-addressed chunks and manifests.

`intake` checks everything before it writes anything: the manifest's paths, modes, links and limits
(`nest/contracts/chunks.py`), each chunk's sha256, each chunk's decompressed size against the manifest (the bomb
guard: a chunk can never unpack past its declared size, nor the package past `max_unpacked_bytes`), each file's
sha256, and a `nest.yaml` at the root. Then it stores what it does not have yet:

    <root>/objects/<xx>/<chunk digest>         compressed chunk, as uploaded
    <root>/manifests/<xx>/<package digest>     canonical manifest JSON

Writes go to a temporary name and are renamed into place, so a reader sees a whole file or none. Identical
chunks across versions and functions are stored once, and need not be sent twice either: a client asks which of
its chunks the store lacks (`missing`), uploads only those, each checked against its digest (`put_chunk`), then
sends the manifest alone (a bundle with no chunks after it; the manifest may be one zstd frame); `intake` then
reads every chunk from disk and checks it exactly as if it had been uploaded (digest, decompression, file
digests), and refuses the manifest with a 409 naming the chunks that are absent. A chunk uploaded on its own,
or confirmed present by `missing`, is "staged": `remove_unreferenced` keeps it for `STAGED_GRACE_S` though no
manifest lists it yet, so a function deleted while another deploy is between its chunks and its manifest takes
nothing that deploy relies on.

The control API serves both kinds read-only (`GET /api/v1/code/{manifests,chunks}/{digest}`, range requests
included) so that instances on this or another node fetch them (`runtime/fetch.py`); the upload side is
`gateway/codeupload/`. Deploy time only: nothing here runs on a cold start.
"""

from __future__ import annotations

import collections
import hashlib
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from nest.contracts.chunks import (
    BUNDLE_MAGIC,
    DIGEST,
    MAX_CHUNK_BYTES,
    MAX_MANIFEST_BYTES,
    STORE_FOLDERS,
    PackageLimits,
    PackageManifest,
    decompress,
    load_verified_manifest,
    parse_manifest,
    split_bundle,
    store_path,
)
from nest.contracts.errors import Conflict, InvalidInput, NotFound
from nest.contracts.manifest import MANIFEST_FILE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

VERIFY_THREADS = 2
MAX_UPLOAD_CHUNK_BYTES = 2 * MAX_CHUNK_BYTES
"""A compressed chunk is at most this big (the manifest's own bound on `size`)."""
MAX_QUERY_DIGESTS = 4096
"""Digests one `missing` call may ask about: a package at the 512 MiB unpacked limit has at most ~520 chunks."""
STAGED_GRACE_S = 3600.0
"""How long a staged chunk (uploaded alone, or confirmed by `missing`) outlives garbage collection unreferenced:
far longer than a deploy takes between asking, uploading and sending its manifest."""
MAX_STAGED = 100_000
ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
"""Staged digests remembered at once; past this, expired ones are forgotten first."""


class MissingChunks(Conflict):
    """A manifest sent alone lists chunks the store does not have: upload them, then send the manifest again."""

    code = "missing_chunks"

    def __init__(self, package: str, missing: list[tuple[int, str]]) -> None:
        shown = ", ".join(digest for _, digest in missing[:5]) + (", ..." if len(missing) > 5 else "")
        super().__init__(
            "package",
            package[:12],
            f"{len(missing)} of its chunks are not in the code store ({shown}); upload them with"
            " PUT /api/v1/uploads/chunks/{digest}, then send the manifest again",
        )
        self.missing = [digest for _, digest in missing]
        self.problems = [(f"chunks[{index}]", f"{digest} is not stored") for index, digest in missing]


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

    def __init__(
        self, root: Path, *, limits: PackageLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._root = root
        self._limits = limits or PackageLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._pinned: collections.Counter[str] = collections.Counter()
        """Packages stored but not yet recorded as a version: `remove_unreferenced` must keep them."""
        self._staged: dict[str, float] = {}
        """Chunk digest -> until when `remove_unreferenced` keeps it though no manifest lists it."""
        self.on_change: Callable[[], None] | None = None
        """Called (from the calling thread) after a package was stored or files were removed: the node cache's
        janitor sweeps then (`controller/codestore/nodecache.py`)."""

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

    def missing(self, digests: Sequence[str]) -> list[str]:
        """Which of these chunks the store lacks, in the order asked (once each). Those it has are staged: the
        deploy that asked will list them in its manifest without sending them, so GC must not take them first."""
        if len(digests) > MAX_QUERY_DIGESTS:
            raise InvalidInput("chunks", f"{len(digests)} digests, more than {MAX_QUERY_DIGESTS} in one query")
        for index, digest in enumerate(digests):
            if not isinstance(digest, str) or not DIGEST.match(digest):
                raise InvalidInput(f"chunks[{index}]", f"{digest!r} is not a sha256 hex digest (64 lowercase hex)")
        absent: list[str] = []
        with self._lock:
            for digest in dict.fromkeys(digests):
                if (self._root / store_path("chunks", digest)).is_file():
                    self._stage(digest)
                else:
                    absent.append(digest)
        return absent

    def put_chunk(self, digest: str, data: bytes) -> bool:
        """Store one compressed chunk uploaded on its own, after checking its sha256 is `digest`; True if it was
        new. Its codec and sizes are checked when a manifest lists it (`intake`), before anything is imported."""
        if not DIGEST.match(digest):
            raise InvalidInput("digest", f"{digest[:80]!r} is not a sha256 hex digest (64 lowercase hex)")
        if not data:
            raise InvalidInput("chunk", "the request body is empty (send the chunk's compressed bytes)")
        if len(data) > MAX_UPLOAD_CHUNK_BYTES:
            raise InvalidInput("chunk", f"{len(data)} bytes, more than a chunk's {MAX_UPLOAD_CHUNK_BYTES}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise InvalidInput("chunk", f"the body's sha256 is {actual}, not {digest} (upload it again)")
        with self._lock:
            written = self._put(self._root / store_path("chunks", digest), data)
            self._stage(digest)
        return written

    def _stage(self, digest: str) -> None:
        """Keep `digest` through GC for `STAGED_GRACE_S` (caller holds the lock)."""
        now = self._clock()
        if len(self._staged) >= MAX_STAGED:
            self._staged = {d: until for d, until in self._staged.items() if until > now}
            while len(self._staged) >= MAX_STAGED:  # all fresh: forget the oldest, they expire first anyway
                del self._staged[next(iter(self._staged))]
        self._staged.pop(digest, None)
        self._staged[digest] = now + STAGED_GRACE_S

    def intake(self, body: bytes) -> StoredPackage:
        """Verify and store a package: a whole bundle, or its manifest alone over chunks stored already (see the
        module docstring). Either way every chunk is hashed and decompressed, and every file checked, first."""
        manifest, uploaded = self._unbundle(body)
        if uploaded is None:
            chunks = self._read_stored(manifest)
        else:
            chunks = uploaded
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
                # a manifest sent alone: its chunks were read and verified above; one a GC took since goes back
                if self._put(self._root / store_path("chunks", ref.digest), chunk):
                    new_chunks += 1
                    new_bytes += len(chunk)
            self._put(self._root / store_path("manifests", digest), manifest.to_bytes())
            self._pinned[digest] += 1
        self._changed()
        return StoredPackage(
            digest=digest,
            manifest_text=nest_yaml,
            files=len(manifest.files) + len(manifest.links),
            size=manifest.unpacked_bytes,
            chunks=len(manifest.chunks),
            new_chunks=new_chunks,
            new_bytes=new_bytes,
        )

    def _unbundle(self, body: bytes) -> tuple[PackageManifest, list[bytes] | None]:
        """The checked manifest and the uploaded chunks, or None for them when the body is the manifest alone."""
        head = len(BUNDLE_MAGIC) + 8
        alone = len(body) >= head and int.from_bytes(body[len(BUNDLE_MAGIC) : head], "big") == len(body) - head
        if body.startswith(BUNDLE_MAGIC) and alone:
            manifest = parse_manifest(_inflate(body[head:]), limits=self._limits)
            return manifest, ([] if not manifest.chunks else None)
        manifest, _, chunks = split_bundle(body, limits=self._limits)
        return manifest, chunks

    def _read_stored(self, manifest: PackageManifest) -> list[bytes]:
        """The manifest's chunks from disk, each verified; `MissingChunks` naming every one that is not there. A
        stored chunk that no longer matches its digest (disk corruption) is deleted and counted missing: the
        client's next `missing` query then asks for it again."""
        chunks: list[bytes] = []
        missing: list[tuple[int, str]] = []
        for index, ref in enumerate(manifest.chunks):
            path = self._root / store_path("chunks", ref.digest)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                missing.append((index, ref.digest))
                continue
            if hashlib.sha256(data).hexdigest() != ref.digest:
                with self._lock:
                    path.unlink(missing_ok=True)
                missing.append((index, ref.digest))
                continue
            chunks.append(data)
        if missing:
            raise MissingChunks(manifest.digest, missing)
        return chunks

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

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
        """Delete manifests neither in `keep` nor pinned, and chunks no kept manifest lists and none is staged;
        returns how many files went. Instances are unaffected: they run from their node's cache. Temporary
        (dot) names are writes in progress and never touched."""
        removed = 0
        with self._lock:
            keep = keep | set(self._pinned)
            now = self._clock()
            self._staged = {digest: until for digest, until in self._staged.items() if until > now}
            live: set[str] = set(self._staged)
            for path in sorted((self._root / STORE_FOLDERS["manifests"]).glob("??/*")):
                if path.name.startswith("."):
                    continue
                if path.name in keep:
                    live.update(chunk.digest for chunk in load_verified_manifest(path.read_bytes()).chunks)
                else:
                    path.unlink()
                    removed += 1
            for path in sorted((self._root / STORE_FOLDERS["chunks"]).glob("??/*")):
                if not path.name.startswith(".") and path.name not in live:
                    path.unlink()
                    removed += 1
        self._changed()
        return removed


def _inflate(text: bytes) -> bytes:
    """A manifest sent alone may be one zstd frame (its JSON is most of a redeploy's bytes: 260 KB for 1,300
    files, 60 KB compressed); it must declare its size, at most `MAX_MANIFEST_BYTES` (the bomb guard)."""
    if not text.startswith(ZSTD_FRAME_MAGIC):
        return text
    declared = zstandard.frame_content_size(text)
    if not 0 <= declared <= MAX_MANIFEST_BYTES:
        raise InvalidInput("package", f"a compressed manifest must declare a size up to {MAX_MANIFEST_BYTES} bytes")
    try:
        return zstandard.ZstdDecompressor().decompress(text, max_output_size=declared)
    except zstandard.ZstdError as exc:
        raise InvalidInput("package", f"the compressed manifest is not a valid zstd frame: {exc}") from None


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
