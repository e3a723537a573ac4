"""The liveness ping against real Unix sockets: healthy, failing, absent and hung instances."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from controller.backends.local import health_check

if TYPE_CHECKING:
    from pathlib import Path


async def _serve(path: Path, answer: bytes | None, release: asyncio.Event | None = None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None and release is not None:
            await release.wait()  # hung until the test ends
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


async def test_a_200_is_healthy_anything_else_is_not(tmp_path: Path) -> None:
    ok = await _serve(tmp_path / "ok.sock", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    bad = await _serve(tmp_path / "bad.sock", b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    release = asyncio.Event()
    hung = await _serve(tmp_path / "hung.sock", None, release)
    try:
        assert await health_check(str(tmp_path / "ok.sock"), timeout_s=2)
        assert not await health_check(str(tmp_path / "bad.sock"), timeout_s=2)
        assert not await health_check(str(tmp_path / "absent.sock"), timeout_s=2)
        assert not await health_check(str(tmp_path / "hung.sock"), timeout_s=0.1)
    finally:
        release.set()
        for server in (ok, bad, hung):
            server.close()
            await server.wait_closed()
