"""Fetching a code package from the code store over HTTP: the manifest, then chunks, each verified by digest.

`HttpChunkSource` talks to `GET {base}/manifests/{digest}` and `GET {base}/chunks/{digest}` (the control API of
`nest up`, or any server with the same layout, e.g. a bucket behind a CDN). It is called from several threads at
once (`runtime/unpack.py` fetches chunks in parallel); each thread keeps its own keep-alive connection, a small
HTTP/1.1 client (`_Connection`) that receives a body straight into the buffer the caller reuses for every chunk.
bench_code_fetch `serial_fetch_mb_s` compares it with `http.client` and httpx on the same chunks.
`FileChunkSource` reads the store's directory instead, for an instance on the controller's own node.

A chunk whose sha256 does not match is fetched again (`ATTEMPTS` in all), never returned: corrupted bytes cannot
reach the decompressor, let alone an import. The manifest is checked against the digest the controller gave the
instance, which makes it the manifest the controller validated at deploy: the node trusts digests, not servers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import threading
import urllib.parse
from typing import TYPE_CHECKING

from nest.contracts.chunks import MAX_MANIFEST_BYTES, read_verified_manifest, store_path

if TYPE_CHECKING:
    from nest.contracts.chunks import Bytes, ChunkRef, ManifestHead, PackageManifest

logger = logging.getLogger("nest.runtime.fetch")

ATTEMPTS = 3


class FetchError(Exception):
    """The package could not be fetched intact; the message names the object and why."""


class _VerifyingSource:
    """Digest checks and refetches over a way of getting an object's bytes (`_get`)."""

    def __init__(self) -> None:
        self.refetches = 0

    def _get(self, kind: str, digest: str, limit: int, buffer: bytearray | None = None) -> Bytes:
        """The object's bytes (at most `limit`), in `buffer` if it is given and large enough."""
        raise NotImplementedError

    def manifest(self, digest: str) -> ManifestHead | PackageManifest:
        """The verified manifest's codec and chunks; its files read by `complete()` (while chunks are fetched)."""
        return read_verified_manifest(bytes(self._verified("manifests", digest, MAX_MANIFEST_BYTES)))

    def chunk(self, ref: ChunkRef, buffer: bytearray | None = None) -> Bytes:
        """The chunk's bytes, digest verified, received into `buffer` (`ref.size` bytes or more) if given: the
        caller reuses one per thread, and the bytes returned are a view of it until its next use."""
        return self._verified("chunks", ref.digest, ref.size, buffer, size=ref.size)

    def _verified(
        self, kind: str, digest: str, limit: int, buffer: bytearray | None = None, *, size: int | None = None
    ) -> Bytes:
        """The object's bytes once their sha256 (and `size`, if given) match; fetched again up to `ATTEMPTS` times."""
        for attempt in range(1, ATTEMPTS + 1):
            data = self._get(kind, digest, limit, buffer)
            if (size is None or len(data) == size) and hashlib.sha256(data).hexdigest() == digest:
                return data
            self._mismatch(kind.removesuffix("s"), digest, attempt)
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

    def _get(self, kind: str, digest: str, limit: int, buffer: bytearray | None = None) -> Bytes:
        try:
            with open(os.path.join(self._root, store_path(kind, digest)), "rb", buffering=0) as file:
                size = os.fstat(file.fileno()).st_size
                if size > limit:
                    raise FetchError(f"{kind} {digest[:12]}: more than {limit} bytes")
                data = memoryview(buffer if buffer is not None and len(buffer) >= size else bytearray(size))[:size]
                got = 0
                while got < size and (read := file.readinto(data[got:])):
                    got += read
        except OSError as exc:
            raise FetchError(f"{kind} {digest[:12]}: {exc}") from exc
        return data[:got]


def open_source(url: str) -> _VerifyingSource:
    """The source for a code URL: `http(s)://host:port/api/v1/code` or `file:///path/to/store`."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return FileChunkSource(urllib.parse.unquote(parsed.path))
    return HttpChunkSource(url)


class HttpChunkSource(_VerifyingSource):
    """Manifests and chunks from one code store over HTTP; safe to call from many threads (a connection each)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        super().__init__()
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FetchError(f"code store URL {base_url!r} is not http(s)://host[:port]/path or file:///path")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path.rstrip("/")
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._opened: list[_Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self._host, self._port, https=self._https, timeout_s=self._timeout_s)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _get(self, kind: str, digest: str, limit: int, buffer: bytearray | None = None) -> Bytes:
        """The body of one GET, at most `limit` bytes; one reconnect on a dropped keep-alive connection."""
        path = f"{self._path}/{kind}/{digest}"
        for retry in (False, True):
            try:
                connection = self._connection()
                return connection.get(path, limit, buffer)
            except (OSError, _Dropped) as exc:
                self._forget()
                if retry:
                    raise FetchError(f"GET {path}: {exc}") from exc
            except FetchError as exc:
                self._forget()
                raise FetchError(f"GET {path}: {exc}") from None
        raise AssertionError("unreachable")

    def _forget(self) -> None:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def close(self) -> None:
        """Close every thread's connection (once the threads are done)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()


class _Dropped(Exception):
    """The server closed the connection before a whole response (an idle keep-alive connection it timed out)."""


class _Connection:
    """One keep-alive HTTP/1.1 connection, used by one thread: the request written in one send, the head parsed
    here (status line, Content-Length, Connection), the body received straight into the caller's buffer.

    Against `http.client` (which parses headers with the email package and allocates each body), ~65 us less per
    request, and receiving into the reused buffer of `runtime/unpack.py` fetched bench_code_fetch's 20 MB of
    uncompressed chunks 2.6x faster (5.9 against 15.5 ms, one thread): fresh memory costs a page fault per 4 KiB
    here. Only what a code store answers is understood: a 200 with Content-Length (any other status is an error
    naming it; a chunked or unbounded body is refused).
    """

    HEAD_LIMIT = 64 * 1024

    def __init__(self, host: str, port: int, *, https: bool, timeout_s: float) -> None:
        raw = socket.create_connection((host, port), timeout=timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if https else raw
        default = 443 if https else 80
        self._request_head = f"HTTP/1.1\r\nHost: {host if port == default else f'{host}:{port}'}\r\n"
        self._received = bytearray(self.HEAD_LIMIT)
        self._pending = b""
        """Bytes received past the end of the previous response (a well-behaved server sends none)."""

    def get(self, path: str, limit: int, buffer: bytearray | None) -> Bytes:
        self._socket.sendall(f"GET {path} {self._request_head}Accept-Encoding: identity\r\n\r\n".encode())
        length, keep_alive, body_start = self._read_head()
        if length > limit:
            raise FetchError(f"{length} bytes, more than the {limit} expected")
        body = memoryview(buffer if buffer is not None and len(buffer) >= length else bytearray(length))[:length]
        got = min(length, len(body_start))
        body[:got] = body_start[:got]
        self._pending = bytes(body_start[got:])
        while got < length:
            received = self._socket.recv_into(body[got:])
            if not received:
                raise _Dropped(f"connection closed after {got} of {length} bytes")
            got += received
        if not keep_alive:
            self.close()
        return body

    def _read_head(self) -> tuple[int, bool, memoryview]:
        """(Content-Length, whether the connection stays open, the body bytes received with the head) of a 200;
        `FetchError` naming any other status."""
        view = memoryview(self._received)
        filled = len(self._pending)
        view[:filled] = self._pending
        self._pending = b""
        end = -1
        while end < 0:
            if filled == len(view):
                raise FetchError(f"a response head longer than {self.HEAD_LIMIT} bytes")
            received = self._socket.recv_into(view[filled:])
            if not received:
                raise _Dropped("connection closed before a response")
            end = self._received.find(b"\r\n\r\n", max(0, filled - 3), filled + received)
            filled += received
        lines = bytes(view[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise FetchError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        if rest[:3] != "200":
            raise FetchError(f"HTTP {rest[:3]}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "")
        if "transfer-encoding" in headers or not length.isdigit():
            raise FetchError("the response has no Content-Length (a code store must send one)")
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return int(length), keep_alive, view[end + 4 : filled]

    def close(self) -> None:
        self._socket.close()
