"""Fetching a code package from the code store over HTTP: the manifest, then chunks, each verified by digest.

`HttpChunkSource` talks to `GET {base}/manifests/{digest}` and `GET {base}/chunks/{digest}` (the control API of
`nest up`, or any server with the same layout, e.g. a bucket behind a CDN). It is called from several threads at
once (`runtime/unpack.py` fetches chunks in parallel); each thread keeps its own keep-alive
`http.client.HTTPConnection`. Against httpx (bench_code_fetch `serial_fetch_mb_s`, six runs on this shared
machine) the throughput is the same within noise, medians ~80 MB/s each; the plain client wins on what is left:
a connection per thread with no shared pool or lock, and nothing to import beyond the standard library.
`FileChunkSource` reads the store's directory instead, for an instance on the controller's own node.

A chunk whose sha256 does not match is fetched again (`ATTEMPTS` in all), never returned: corrupted bytes cannot
reach the decompressor, let alone an import. The manifest is checked against the digest the controller gave the
instance, which makes it the manifest the controller validated at deploy: the node trusts digests, not servers.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import urllib.parse
from typing import TYPE_CHECKING

from nest.contracts.chunks import MAX_MANIFEST_BYTES, PackageManifest, load_verified_manifest, store_path

if TYPE_CHECKING:
    from nest.contracts.chunks import ChunkRef

logger = logging.getLogger("nest.runtime.fetch")

ATTEMPTS = 3


class FetchError(Exception):
    """The package could not be fetched intact; the message names the object and why."""


class _VerifyingSource:
    """Digest checks and refetches over a way of getting an object's bytes (`_get`)."""

    def __init__(self) -> None:
        self.refetches = 0

    def _get(self, kind: str, digest: str, limit: int) -> bytes:
        raise NotImplementedError

    def manifest(self, digest: str) -> PackageManifest:
        for attempt in range(1, ATTEMPTS + 1):
            data = self._get("manifests", digest, MAX_MANIFEST_BYTES)
            if hashlib.sha256(data).hexdigest() == digest:
                return load_verified_manifest(data)
            self._mismatch("manifest", digest, attempt)
        raise AssertionError("unreachable")

    def chunk(self, ref: ChunkRef) -> bytes:
        for attempt in range(1, ATTEMPTS + 1):
            data = self._get("chunks", ref.digest, ref.size)
            if len(data) == ref.size and hashlib.sha256(data).hexdigest() == ref.digest:
                return data
            self._mismatch("chunk", ref.digest, attempt)
        raise AssertionError("unreachable")

    def _mismatch(self, kind: str, digest: str, attempt: int) -> None:
        self.refetches += 1
        if attempt == ATTEMPTS:
            raise FetchError(f"{kind} {digest[:12]}: sha256 did not match in {ATTEMPTS} fetches (corrupt store?)")
        logger.warning("%s %s: sha256 mismatch, fetching again", kind, digest[:12])

    def close(self) -> None:
        """Release connections (once the threads using them are done)."""

    def __enter__(self) -> _VerifyingSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FileChunkSource(_VerifyingSource):
    """The code store's own directory, for an instance on the controller's node (`file:///data/chunks`): the same
    digests verified, no HTTP request to the gateway's event loop."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self._root = root

    def _get(self, kind: str, digest: str, limit: int) -> bytes:
        try:
            with open(os.path.join(self._root, store_path(kind, digest)), "rb") as file:
                data = file.read(limit + 1)
        except OSError as exc:
            raise FetchError(f"{kind} {digest[:12]}: {exc}") from exc
        if len(data) > limit:
            raise FetchError(f"{kind} {digest[:12]}: more than {limit} bytes")
        return data


def open_source(url: str) -> _VerifyingSource:
    """The source for a code URL: `http(s)://host:port/api/v1/code` or `file:///path/to/store`."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return FileChunkSource(urllib.parse.unquote(parsed.path))
    return HttpChunkSource(url)


class HttpChunkSource(_VerifyingSource):
    """Manifests and chunks from one code store over HTTP; safe to call from many threads."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        super().__init__()
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FetchError(f"code store URL {base_url!r} is not http(s)://host[:port]/path or file:///path")
        self._https = parsed.scheme == "https"
        self._host, self._port = parsed.hostname, parsed.port
        self._path = parsed.path.rstrip("/")
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self._timeout_s)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _get(self, kind: str, digest: str, limit: int) -> bytes:
        """The body of one GET, at most `limit` bytes; one reconnect on a dropped keep-alive connection."""
        path = f"{self._path}/{kind}/{digest}"
        for retry in (False, True):
            connection = self._connection()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read(limit + 1)
                if response.status == 200 and not response.isclosed():
                    response.read()  # drain, so the connection can be reused
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._local.connection = None
                if retry:
                    raise FetchError(f"GET {path}: {exc}") from exc
                continue
            if response.status != 200 or len(body) > limit:
                connection.close()
                self._local.connection = None
                problem = f"HTTP {response.status}" if response.status != 200 else f"more than {limit} bytes"
                raise FetchError(f"GET {path}: {problem}")
            return body
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every thread's connection (once the threads are done)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
