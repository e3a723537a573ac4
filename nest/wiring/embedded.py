"""`nest up`: the embedded default, every component in one process, instances as child processes.

The one place that knows the concrete classes: SQLite store, local backend, fleet, function service, routing
table, autoscaler, and the gateway app served by uvicorn. The Protocol-typed parameters below are where mypy
checks that the controller fits the gateway's and autoscaler's ports and the gateway the controller's.

Shutdown (Ctrl-C or SIGTERM): uvicorn stops accepting connections and waits for in-flight requests; then the
autoscaler and reconcile loop stop, every instance is stopped (draining what it still runs), and the store
closes. Nothing is left running: instances also carry PDEATHSIG, so even a killed `nest up` takes them along.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
import uvloop
from prometheus_client import CollectorRegistry, Histogram

from autoscaler.loop import Autoscaler
from controller.backends.local import LocalBackend, LocalBackendConfig
from controller.codestore.cachejanitor import DEFAULT_BUDGET_BYTES, CacheJanitor, NodeCache
from controller.fleet import Fleet
from controller.functions import FunctionService, ServiceConfig
from controller.pooling import PoolCollector
from controller.store.sqlite import SqliteStore
from gateway.app import GatewayApp, GatewayCollector
from gateway.codeupload.api import CodeUploadApi
from gateway.metrics_service import MetricsServer, TrafficLedger
from gateway.proxy import FunctionProxy, ProxyConfig
from gateway.routing import RoutingTable
from gateway.upstream import UpstreamPool
from nest.contracts.pools import PoolsFileError, parse_pools
from nest.wiring.invocations import AsyncConfig, async_invocations
from nest.wiring.stalls import watching

if TYPE_CHECKING:
    from collections.abc import Callable

    from autoscaler.ports import MetricsSource, ScaleTarget, UsageSource
    from controller.backends.base import Backend
    from controller.ports import RoutePublisher
    from gateway.asyncq.dispatcher import Dispatcher
    from gateway.ports import ControlPlane, DemandSignal
    from nest.contracts.pools import PoolSettings

logger = logging.getLogger("nest")


@dataclass(frozen=True, slots=True)
class EmbeddedConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("~/.nest")
    activation_timeout_s: float = 30.0
    buffer_size: int = 1000
    max_package_bytes: int = 256 * 1024**2
    tick_s: float = 1.0
    drain_timeout_s: float = 30.0
    health_interval_s: float = 5.0
    pools: dict[str, PoolSettings] = field(default_factory=dict)
    """Operator-declared warm pools (`nest up --pools FILE`, `--pool NAME=mod,mod`); `default` may be tuned."""
    pools_file: Path | None = None
    """Re-read on SIGHUP: changed preloads get a new zygote and their instances are replaced without downtime."""
    metrics_grpc: str | None = None
    """`nest up --metrics-grpc HOST:PORT`: also serve the gateway's traffic over gRPC for remote autoscalers."""
    async_config: AsyncConfig = field(default_factory=AsyncConfig)
    code_cache_bytes: int = DEFAULT_BUDGET_BYTES
    """`nest up --code-cache-size`: the node's unpacked-package cache is kept within it (cachejanitor.py)."""


def _check_ports(
    metrics: MetricsSource,
    target: ScaleTarget,
    publisher: RoutePublisher,
    demand: DemandSignal,
    control: ControlPlane,
    usage: UsageSource,
) -> None:
    """Nothing at run time: mypy checks here that each concrete class satisfies the port it is wired to."""


async def run(config: EmbeddedConfig) -> None:
    data_dir = config.data_dir.expanduser().resolve()
    for sub in ("code", "logs", "run"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    public_host = "127.0.0.1" if config.host in {"0.0.0.0", "::"} else config.host
    store = SqliteStore(data_dir / "state.db")
    await store.open()

    table = RoutingTable(buffer_size=config.buffer_size)
    pool = UpstreamPool()
    table.on_endpoint_removed = pool.drop
    registry = CollectorRegistry()
    fleet = Fleet(table, on_start_phases=start_phases_histogram(registry))
    local = local_backend(config, data_dir, fleet, registry)
    backend: Backend = local
    metrics, metrics_server = gateway_metrics(config, table)
    autoscaler = Autoscaler(metrics, fleet, tick_s=config.tick_s, usage=local)  # CPU and memory: the backend's
    table.connect_demand(autoscaler)
    service = FunctionService(
        store,
        fleet,
        publisher=table,
        config=ServiceConfig(
            code_root=data_dir / "code",
            log_dir=data_dir / "logs",
            public_url=f"http://{public_host}:{config.port}",
            pools=lambda: {"none", *local.warm_pools.declared},
        ),
    )
    _check_ports(table, fleet, table, autoscaler, service, local)

    registry.register(GatewayCollector(table))
    state = {"ready": False}
    proxy = FunctionProxy(table, pool, ProxyConfig(activation_timeout_s=config.activation_timeout_s))
    invocations = await async_invocations(config.async_config, data_dir, table, proxy)
    app = GatewayApp(
        proxy=proxy,
        control=service,
        registry=registry,
        ready=lambda: state["ready"],
        max_package_bytes=config.max_package_bytes,
        extra_routes=[*invocations.routes(), *CodeUploadApi(service.chunks).routes()],
        async_submit=invocations.api.asgi_submit,
    )
    server = gateway_server(config, app)
    try:
        if metrics_server is not None:
            await metrics_server.start()  # a taken port fails `nest up` here, before anything runs
        async with asyncio.TaskGroup() as group:
            background = [
                group.create_task(backend.run(), name="backend"),
                group.create_task(fleet.run(), name="fleet"),
                group.create_task(autoscaler.run(), name="autoscaler"),
            ]
            background.append(group.create_task(invocations.worker.run(), name="deliveries"))
            background.append(
                group.create_task(code_cache_janitor(config, data_dir, fleet, service).run(), name="cache")
            )
            dispatching = group.create_task(invocations.dispatcher.run(), name="dispatcher")
            if metrics_server is not None:
                background.append(group.create_task(metrics_server.run(), name="metrics-grpc"))
            await service.load()
            if config.pools_file is not None:
                watch_pools_file(config.pools_file, local, group)
            logger.info("Nest data directory: %s", data_dir)
            await serve_gateway(server, state)
            await drain(config, invocations.dispatcher, dispatching, fleet)
            for task in background:
                task.cancel()
        logger.info("background stopped")
    finally:
        pool.close()
        await invocations.close()
        await store.close()
        logger.info("state closed")


async def serve_gateway(server: uvicorn.Server, state: dict[str, bool]) -> None:
    """Serve until told to stop, `/readyz` saying so meanwhile; the start-up heap settled first."""
    settle_heap()
    state["ready"] = True
    with watching():  # NEST_DEBUG_LOOP_STALLS=path: a debugging aid, off unless set (nest/wiring/stalls.py)
        await server.serve()
    state["ready"] = False


def settle_heap() -> None:
    """Collect once, then move every object start-up made into the collector's permanent generation.

    The platform's one event loop serves every request; a full collection walks every tracked object while the
    loop waits. Start-up leaves ~62,000 of them (the gateway, control API, pydantic models, gRPC, the stores), so
    one full collection took 45-69 ms here, a stall in the middle of whatever requests were in flight (seen once in
    50 cold starts through the gateway: a 69 ms gen2 pass). Frozen, they are never walked again: the next full
    collection took 1.5 ms. They are never freed either, which is what they are for: they live as long as `nest up`.
    """
    gc.collect()
    gc.freeze()


async def drain(config: EmbeddedConfig, dispatcher: Dispatcher, dispatching: asyncio.Task[None], fleet: Fleet) -> None:
    """After the gateway stopped taking requests: running async tasks finish and are settled, then instances stop."""
    dispatcher.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(dispatching), config.drain_timeout_s)
    dispatching.cancel()
    logger.info("draining: stopping every instance")
    await fleet.shutdown(grace_s=config.drain_timeout_s)


def start_phases_histogram(registry: CollectorRegistry) -> Callable[[tuple[tuple[str, float], ...]], None]:
    """`nest_instance_start_seconds{phase}`, fed with each started instance's phases (milliseconds)."""
    start_seconds = Histogram(
        "nest_instance_start_seconds",
        "Instance start, by phase (spawn/fork/boot/claim: to a running process; fetch/unpack: the code package,"
        " first start of a version on a node; init: the runtime's start-up)",
        ["phase"],
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
        registry=registry,
    )

    def observe_start(phases: tuple[tuple[str, float], ...]) -> None:
        for phase, ms in phases:
            start_seconds.labels(phase).observe(ms / 1000)

    return observe_start


def gateway_server(config: EmbeddedConfig, app: GatewayApp) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="info",
            timeout_keep_alive=30,
            proxy_headers=False,  # Nest is the edge here; X-Forwarded-* from clients are not trusted
            server_header=False,
            timeout_graceful_shutdown=int(config.drain_timeout_s),
        )
    )


def gateway_metrics(config: EmbeddedConfig, table: RoutingTable) -> tuple[MetricsSource, MetricsServer | None]:
    """What the embedded autoscaler reads, and the gRPC metrics server for remote ones (`--metrics-grpc`).

    With gRPC metrics on, a ledger becomes the table's only reader: each collector (this autoscaler, remote ones)
    gets its own interval instead of resetting the others'. The server stops when its task is cancelled.
    """
    if config.metrics_grpc is None:
        return table, None
    ledger = TrafficLedger(table)
    return ledger, MetricsServer(ledger, config.metrics_grpc)


def local_backend(config: EmbeddedConfig, data_dir: Path, fleet: Fleet, registry: CollectorRegistry) -> LocalBackend:
    """Instances as child processes, warm pools included: the fleet replaces what their zygotes made stale."""
    local = LocalBackend(
        LocalBackendConfig(
            run_dir=data_dir / "run",
            log_dir=data_dir / "logs",
            health_interval_s=config.health_interval_s,
            pools=dict(config.pools),
            code_url=f"file://{data_dir / 'chunks'}",  # this node holds the store; other nodes use HTTP
            code_cache=data_dir / "cache",
        ),
        fleet.on_event,
    )
    local.on_stale = fleet.supersede
    fleet.backend = local
    registry.register(PoolCollector(local.warm_pools))
    return local


def code_cache_janitor(config: EmbeddedConfig, data_dir: Path, fleet: Fleet, service: FunctionService) -> CacheJanitor:
    """Keeps `<data_dir>/cache` within `--code-cache-size`; the code store pokes it after a deploy or delete."""
    janitor = CacheJanitor(NodeCache(data_dir / "cache"), budget_bytes=config.code_cache_bytes, packages=fleet.packages)
    service.chunks.on_change = janitor.poke
    return janitor


def watch_pools_file(path: Path, backend: LocalBackend, group: asyncio.TaskGroup) -> None:
    """SIGHUP re-reads the pools file; a bad file is logged and the running pools are kept."""

    def reload() -> None:
        try:
            settings = parse_pools(path.read_bytes())
        except (OSError, PoolsFileError) as exc:
            logger.error("pools file %s not reloaded: %s", path, exc)
            return
        logger.info("reloading warm pools from %s", path)
        group.create_task(backend.warm_pools.reconfigure(settings), name="pools-reload")

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def serve(config: EmbeddedConfig) -> None:
    """Run `nest up` in the foreground until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run(config))
