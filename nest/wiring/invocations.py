"""Wiring of async invocations for `nest up`: the task queue, the dispatcher, the outbox and its worker, the API.

The queue and the outbox share `tasks.db` next to the state (two connections; WAL). The webhook signing secret
is `--webhook-secret` / `$NEST_WEBHOOK_SECRET`, or one generated once into `<data_dir>/webhook-secret`
(mode 0600) so that receivers keep verifying across restarts.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.asyncq.api import AsyncApi, RouteCatalog
from gateway.asyncq.delivery.outbox import SqliteOutbox
from gateway.asyncq.delivery.worker import Deliveries, DeliveryWorker
from gateway.asyncq.dispatcher import Dispatcher
from gateway.asyncq.invoking import ProxyInvoker
from gateway.asyncq.jetstream.queue import JetStreamTaskQueue
from gateway.asyncq.sqlite import SqliteTaskQueue
from gateway.triggers.lambda_invoke import LambdaInvokeApi

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.routing import BaseRoute

    from gateway.asyncq.api import TaskStore
    from gateway.proxy import FunctionProxy
    from gateway.routing import RoutingTable

SECRET_FILE = "webhook-secret"


@dataclass(frozen=True, slots=True)
class AsyncConfig:
    webhook_secret: str | None = None
    allow_private_webhooks: bool = False
    nats_url: str = "nats://127.0.0.1:4222"
    """Where `async.on_success: {nats: SUBJECT}` destinations publish."""
    lease_margin_s: float = 30.0
    """`nest up --lease-margin`: a task's lease is its function's timeout plus this, so after a crash its tasks run
    again that long after they started."""
    queue_url: str | None = None
    """`nest up --queue nats://HOST:PORT[/PREFIX]`: keep async tasks in NATS JetStream instead of `tasks.db`."""


@dataclass(frozen=True, slots=True)
class AsyncInvocations:
    queue: SqliteTaskQueue | JetStreamTaskQueue
    outbox: SqliteOutbox
    dispatcher: Dispatcher
    worker: DeliveryWorker
    api: AsyncApi
    lambda_api: LambdaInvokeApi

    def routes(self) -> list[BaseRoute]:
        return [*self.api.routes(), *self.lambda_api.routes()]

    async def close(self) -> None:
        await self.worker.close()
        await self.outbox.close()
        await self.queue.close()


async def async_invocations(
    config: AsyncConfig, data_dir: Path, table: RoutingTable, proxy: FunctionProxy
) -> AsyncInvocations:
    queue: SqliteTaskQueue | JetStreamTaskQueue
    if config.queue_url is not None:
        queue = JetStreamTaskQueue.from_url(config.queue_url)
    else:
        queue = SqliteTaskQueue(data_dir / "tasks.db")
    await queue.open()
    outbox = SqliteOutbox(data_dir / "tasks.db")
    await outbox.open()
    store: TaskStore = queue
    catalog = RouteCatalog(table.routes)
    worker_wake: list[DeliveryWorker] = []
    sink = Deliveries(outbox, catalog, wake=lambda: worker_wake[0].wake())
    owner = f"{socket.gethostname()}-{os.getpid()}"
    invoker = ProxyInvoker(proxy)
    dispatcher = Dispatcher(store, invoker, catalog, owner=owner, sink=sink, lease_margin_s=config.lease_margin_s)
    worker = DeliveryWorker(
        outbox,
        store,
        catalog,
        secret=config.webhook_secret or webhook_secret(data_dir),
        allow_private=config.allow_private_webhooks,
        nats_url=config.nats_url,
        on_submitted=dispatcher.wake,
    )
    worker_wake.append(worker)
    table.async_waiting = dispatcher.waiting
    api = AsyncApi(store, catalog, wake=dispatcher.wake, deliveries=outbox.for_call)
    return AsyncInvocations(queue, outbox, dispatcher, worker, api, LambdaInvokeApi(invoker, catalog, api))


def webhook_secret(data_dir: Path) -> str:
    """The platform's Standard Webhooks secret (`whsec_...`), made once and kept in the data directory."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret
