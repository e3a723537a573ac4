"""`FakeChunkSource`: a package's manifest and chunks from memory (the runtime's `ChunkSource` port), counting
what was asked for; `delay_s` holds each manifest request so that two starters overlap. The manifest is answered
as the real sources answer it: its head, read from its canonical bytes, the files read by `complete()`. A chunk
is copied into the caller's buffer when one is given, as the real sources receive into it: a caller that kept a
chunk's view past its next request would see another chunk's bytes."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from nest.contracts.chunks import read_verified_manifest

if TYPE_CHECKING:
    from nest.contracts.chunks import Bytes, ChunkRef, ManifestHead, PackageManifest


class FakeChunkSource:
    def __init__(self, manifest: PackageManifest, chunks: list[bytes], *, delay_s: float = 0.0) -> None:
        self._manifest = manifest
        self._chunks = {ref.digest: data for ref, data in zip(manifest.chunks, chunks, strict=True)}
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self.manifest_requests = 0
        self.chunk_requests: list[str] = []

    def manifest(self, digest: str) -> ManifestHead | PackageManifest:
        with self._lock:
            self.manifest_requests += 1
        if self._delay_s:
            time.sleep(self._delay_s)
        if digest != self._manifest.digest:
            raise KeyError(digest)
        return read_verified_manifest(self._manifest.to_bytes())

    def chunk(self, ref: ChunkRef, buffer: bytearray | None = None) -> Bytes:
        with self._lock:
            self.chunk_requests.append(ref.digest)
        data = self._chunks[ref.digest]
        if buffer is None or len(buffer) < len(data):
            return data
        buffer[: len(data)] = data
        return memoryview(buffer)[: len(data)]
