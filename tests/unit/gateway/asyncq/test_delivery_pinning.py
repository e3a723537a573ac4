"""Webhooks go to the address the SSRF guard checked, not to a second resolution of the name (DNS rebinding)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.asyncq.delivery.records import Delivery, Kind
from gateway.asyncq.delivery.worker import DeliveryRefused, DeliveryWorker, pinned


@pytest.mark.parametrize(
    ("url", "address", "expected"),
    [
        ("http://hooks.example/in", "198.51.100.7", ("http://198.51.100.7/in", "hooks.example", {})),
        (
            "https://hooks.example:8443/in?a=1",
            "198.51.100.7",
            ("https://198.51.100.7:8443/in?a=1", "hooks.example:8443", {"sni_hostname": "hooks.example"}),
        ),
        ("http://hooks.example:81/", "2001:db8::7", ("http://[2001:db8::7]:81/", "hooks.example:81", {})),
        ("http://[2001:db8::7]/x", "2001:db8::7", ("http://[2001:db8::7]/x", "[2001:db8::7]", {})),
    ],
)
def test_pinned_aims_the_url_at_the_address_and_keeps_the_name(
    url: str, address: str, expected: tuple[str, str, dict[str, str]]
) -> None:
    target, host, extensions = pinned(url, address)
    assert (target, host["host"], extensions) == expected


class Receiver:
    """A plain HTTP/1.1 server on 127.0.0.1 that records each request's head and answers 204."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()


def worker(resolver: Any, *, allow_private: bool) -> DeliveryWorker:
    # Sending a webhook touches neither the outbox, the queue nor the specs.
    unused = cast("Any", None)
    return DeliveryWorker(
        unused, unused, unused, secret="whsec_" + "A" * 32, allow_private=allow_private, resolver=resolver
    )


def webhook(url: str) -> Delivery:
    return Delivery(id="msg_1", call_id="call_1", kind=Kind.WEBHOOK, target=url, body=b'{"ok":true}')


async def test_the_request_goes_to_the_checked_address_with_the_name_in_host() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1"]

    receiver = Receiver()
    async with receiver as port:
        sender = worker(resolver, allow_private=True)
        try:
            await sender.send(webhook(f"http://hooks.invalid:{port}/in"))
        finally:
            await sender.close()
    # Resolved once, by the guard; the client never resolved the name itself ("hooks.invalid" has no DNS answer
    # anywhere, RFC 6761), so a rebinding name cannot swap in another address after the check.
    assert asked == [("hooks.invalid", port)]
    [head] = receiver.heads
    assert head.startswith(b"POST /in HTTP/1.1\r\n")
    assert f"host: hooks.invalid:{port}\r\n".encode() in head.lower()
    assert b"webhook-signature: v1," in head.lower()


async def test_any_forbidden_address_refuses_the_delivery() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]

    sender = worker(mixed, allow_private=True)
    try:
        with pytest.raises(DeliveryRefused, match=r"169\.254\.169\.254 is a link-local address"):
            await sender.send(webhook("http://metadata.invalid/latest"))
    finally:
        await sender.close()
