"""Sending the outbox: callbacks and webhooks over HTTP (signed, SSRF-guarded), functions, NATS subjects.

`Deliveries` is the dispatcher's `ResultSink`: it turns a finished task into records and writes them to the
outbox before the task is settled. `DeliveryWorker` sends what is due, retrying with backoff up to
`MAX_ATTEMPTS`, after which a delivery stays in the outbox as `failed` (shown with its invocation).

Webhooks and callbacks are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature`), so receivers can verify them with any Standard Webhooks library and the secret `nest up`
prints the location of. Before connecting, every address the host resolves to is checked
(`records.forbidden_address`), and the request then goes to one of those checked addresses, not to the name:
a second resolution by the HTTP client could answer differently (DNS rebinding: a public address for the check,
127.0.0.1 for the connection). The original host travels in `Host` and, for https, as the TLS server name, so
virtual hosting and certificate verification see the name. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from gateway.asyncq.crashpoints import crashpoint
from gateway.asyncq.delivery.records import (
    DEPTH_KEY,
    Finished,
    Kind,
    condition_of,
    deliveries_for,
    forbidden_address,
)
from gateway.asyncq.retry import backoff_s
from gateway.asyncq.tasks import NewTask, TaskStatus
from nest.contracts.model import AsyncSpec

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.asyncq.delivery.outbox import Pending, SqliteOutbox
    from gateway.asyncq.delivery.records import Delivery
    from gateway.asyncq.tasks import Outcome, Task, TaskQueue

    Resolver = Callable[[str, int], Awaitable[list[str]]]
    """Host and port to the addresses (IP literals) it resolves to."""

logger = logging.getLogger("nest.asyncq.delivery")

MAX_ATTEMPTS = 8
TIMEOUT_S = 10.0
BATCH = 32


async def resolve(host: str, port: int) -> list[str]:
    """The stream addresses `host` resolves to, in the resolver's order (first preferred)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """`url` aimed at `address` (an IP literal): the URL to request, its Host header and httpx extensions.

    E.g. ("https://hooks.example.com:8443/x?y", "203.0.113.7") -> "https://203.0.113.7:8443/x?y",
    {"host": "hooks.example.com:8443"}, {"sni_hostname": "hooks.example.com"}.
    """
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    shown_host = f"[{hostname}]" if ":" in hostname else hostname
    host = f"{shown_host}:{parts.port}" if parts.port else shown_host
    extensions: dict[str, Any] = {"sni_hostname": hostname} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"host": host}, extensions


class SpecSource(Protocol):
    def async_spec(self, function: str) -> AsyncSpec | None: ...


class DeliveryRefused(Exception):
    """This delivery cannot succeed as configured (forbidden address, bad URL): no retry."""


class Deliveries:
    """The dispatcher's `ResultSink`: records owed by a finished task, made durable before it is settled."""

    def __init__(self, outbox: SqliteOutbox, specs: SpecSource, *, wake: Callable[[], None]) -> None:
        self._outbox = outbox
        self._specs = specs
        self._wake = wake
        self._recorded = False

    async def record(self, task: Task, outcome: Outcome, *, now: float) -> None:
        spec = self._specs.async_spec(task.function) or AsyncSpec()
        succeeded = outcome.status is TaskStatus.SUCCEEDED
        started = task.started_at if task.started_at is not None else now
        finished = Finished(
            call_id=task.id,
            function=task.function,
            succeeded=succeeded,
            condition=condition_of(
                succeeded=succeeded, error=outcome.error, expired=outcome.status is TaskStatus.EXPIRED
            ),
            attempts=task.attempts + 1,
            payload=task.payload,
            request=task.request,
            status=outcome.result_status,
            response=outcome.result,
            error=outcome.error,
            callback_url=task.callback_url,
            finished_at=now,
            duration_s=max(0.0, now - started),
        )
        deliveries = deliveries_for(finished, spec)
        if deliveries:
            await self._outbox.put(deliveries, now=now)
            self._recorded = True

    def wake(self) -> None:
        """Wake the worker only when something was recorded since: most tasks owe no delivery."""
        if self._recorded:
            self._recorded = False
            self._wake()


class DeliveryWorker:
    def __init__(
        self,
        outbox: SqliteOutbox,
        queue: TaskQueue,
        specs: SpecSource,
        *,
        secret: str,
        allow_private: bool = False,
        nats_url: str = "nats://127.0.0.1:4222",
        on_submitted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        idle_s: float = 1.0,
        resolver: Resolver = resolve,
    ) -> None:
        self._outbox = outbox
        self._resolve = resolver
        self._queue = queue
        self._specs = specs
        self._signer = Webhook(secret)
        self._allow_private = allow_private
        self._nats_url = nats_url
        self._nats: Any = None
        self._on_submitted = on_submitted
        self._clock = clock
        self._idle_s = idle_s
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._http.aclose()
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.close()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self._outbox.due(now=self._clock(), limit=BATCH)
                if due:
                    await asyncio.gather(*(self._deliver(item) for item in due))
                    continue
                next_at = await self._outbox.next_due()
            except Exception:
                logger.exception("delivery round failed; retrying")
                next_at = None
            wait_s = self._idle_s if next_at is None else min(self._idle_s, max(0.0, next_at - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def _deliver(self, pending: Pending) -> None:
        delivery = pending.delivery
        try:
            await self.send(delivery)
            crashpoint("during_delivery")  # sent, not yet recorded as delivered: sent again after a restart
        except DeliveryRefused as exc:
            logger.warning("delivery %s to %s refused: %s", delivery.id, delivery.target, exc)
            await self._outbox.attempt_failed(delivery.id, error=f"refused: {exc}", retry_at=None)
        except Exception as exc:
            attempts = pending.attempts + 1
            retry_at = None
            if attempts < MAX_ATTEMPTS:
                retry_at = self._clock() + backoff_s(base_s=1.0, cap_s=300.0, step=attempts - 1, jitter=random.random())
            logger.warning("delivery %s to %s failed (attempt %d): %s", delivery.id, delivery.target, attempts, exc)
            await self._outbox.attempt_failed(delivery.id, error=str(exc) or type(exc).__name__, retry_at=retry_at)
        else:
            await self._outbox.delivered(delivery.id, now=self._clock())

    async def send(self, delivery: Delivery) -> None:
        if delivery.kind in {Kind.WEBHOOK, Kind.CALLBACK}:
            await self._post(delivery)
        elif delivery.kind is Kind.FUNCTION:
            await self._submit(delivery)
        else:
            await self._publish(delivery)

    async def _post(self, delivery: Delivery) -> None:
        address = await self._check_target(delivery.target)
        url, host, extensions = pinned(delivery.target, address)
        timestamp = datetime.now(UTC)
        signature = self._signer.sign(delivery.id, timestamp, delivery.body.decode("utf-8", errors="replace"))
        headers = {
            "content-type": "application/json",
            **delivery.headers,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
            **host,
        }
        request = self._http.build_request("POST", url, content=delivery.body, headers=headers, extensions=extensions)
        response = await self._http.send(request)
        if response.status_code >= 300:
            raise RuntimeError(f"{delivery.target} answered {response.status_code}")

    async def _check_target(self, url: str) -> str:
        """The address to connect to: every address the host resolves to must pass the SSRF guard."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise DeliveryRefused(f"{url!r} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve(parts.hostname, port)
        except socket.gaierror as exc:
            raise RuntimeError(f"cannot resolve {parts.hostname}: {exc}") from None
        if not addresses:
            raise RuntimeError(f"cannot resolve {parts.hostname}: no address")
        for address in addresses:
            reason = forbidden_address(address, allow_private=self._allow_private)
            if reason is not None:
                raise DeliveryRefused(f"{parts.hostname}: {reason}")
        return addresses[0]

    async def _submit(self, delivery: Delivery) -> None:
        if self._specs.async_spec(delivery.target) is None:
            raise RuntimeError(f"destination function {delivery.target!r} is not deployed")
        now = self._clock()
        new = NewTask(
            function=delivery.target,
            payload=delivery.body,
            payload_digest=hashlib.sha256(delivery.body).hexdigest(),
            enqueued_at=now,
            not_before=now,
            idempotency_key=f"destination:{delivery.id}",
            request={"method": "POST", "path": "/", "content_type": "application/json", DEPTH_KEY: str(delivery.depth)},
        )
        await self._queue.submit(new)
        self._on_submitted()

    async def _publish(self, delivery: Delivery) -> None:
        import nats

        if self._nats is None or not self._nats.is_connected:
            self._nats = await nats.connect(self._nats_url, connect_timeout=2, max_reconnect_attempts=1)
        headers = {"Nats-Msg-Id": delivery.id, "Content-Type": "application/json"}
        try:
            await self._nats.jetstream().publish(delivery.target, delivery.body, headers=headers, timeout=2)
        except nats.js.errors.NoStreamResponseError:
            await self._nats.publish(delivery.target, delivery.body, headers=headers)
            await self._nats.flush(timeout=2)
