"""The gateway's ASGI application: the function proxy, the control API, metrics and health.

`/function/...` (and manifests' extra paths) go straight to `FunctionProxy`, a plain ASGI callable, so the
per-request path skips Starlette's routing and middleware. Everything else is a Starlette app: `/api/v1/...`
(`gateway/api.py`), `/metrics` (Prometheus), `/healthz` (the process runs), `/readyz` (it serves: state loaded,
not draining).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import CODE_PREFIX, ControlApi
from gateway.errors import error_body, retry_after_of, status_of
from nest.contracts.errors import NestError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from starlette.requests import Request
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp, Receive, Scope, Send

    from gateway.ports import ControlPlane
    from gateway.proxy import FunctionProxy
    from gateway.routing import RoutingTable

ASYNC_PREFIX = "/async-function/"
STARLETTE_PREFIXES = ("/api/", "/metrics", "/healthz", "/readyz", "/async-function/", "/2015-03-31/")


class GatewayApp:
    """Dispatch: the proxy for function traffic, Starlette for the rest."""

    def __init__(
        self,
        *,
        proxy: FunctionProxy,
        control: ControlPlane,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        max_package_bytes: int = 256 * 1024**2,
        extra_routes: Sequence[BaseRoute] = (),
        async_submit: ASGIApp | None = None,
    ) -> None:
        self.proxy = proxy
        self.registry = registry
        self.ready = ready
        self.async_submit = async_submit
        """Plain-ASGI `/async-function/...` submissions (skipping Starlette's routing: ~30% of a no-op task)."""
        control_api = ControlApi(control, max_package_bytes=max_package_bytes)
        self.code_objects = control_api.code_objects
        """Plain-ASGI `/api/v1/code/...`: instances fetch chunks here on a cold start (Starlette's routing and
        FileResponse cost ~0.6 ms a request, gateway/api.py)."""
        routes = [
            *control_api.routes(),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            *extra_routes,
        ]
        self.starlette = Starlette(routes=routes, exception_handlers={NestError: _nest_error})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(STARLETTE_PREFIXES):
            await self.proxy(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(CODE_PREFIX):
            await self.code_objects(scope, receive, send)
        elif self.async_submit is not None and scope["type"] == "http" and scope["path"].startswith(ASYNC_PREFIX):
            await self.async_submit(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)


async def _nest_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NestError)
    function = request.path_params.get("name")
    retry_after = retry_after_of(exc)
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return JSONResponse(error_body(exc, function=function), status_code=status_of(exc), headers=headers)


class GatewayCollector:
    """Prometheus metrics read from the routing table at scrape time: nothing is recorded on the hot path."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        labels = ["function", "version"]
        requests = CounterMetricFamily("nest_gateway_requests", "Requests finished per version", labels=labels)
        in_flight = GaugeMetricFamily("nest_gateway_in_flight", "Requests being served per version", labels=labels)
        queued = GaugeMetricFamily("nest_gateway_queued", "Requests waiting in the activator", labels=labels)
        ready = GaugeMetricFamily("nest_gateway_endpoints", "Ready instances routed to", labels=labels)
        for key, gate in list(self.table.gates.items()):
            values: list[Any] = [key.function, key.version]
            requests.add_metric(values, gate.traffic.total)
            in_flight.add_metric(values, gate.traffic.in_flight)
            queued.add_metric(values, gate.traffic.queued)
            ready.add_metric(values, sum(1 for e in gate.endpoints if e.routable))
        yield from (requests, in_flight, queued, ready)
