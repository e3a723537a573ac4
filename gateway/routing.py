"""The gateway's routing table: function -> live route, version -> gate (slots and buffer), and traffic metrics.

The controller publishes into it (`set_route`, `remove_route`, `set_endpoints`, `report_init_failure`: the
controller's `RoutePublisher` port, satisfied structurally); the proxy reads it on every request (`resolve`,
`gate`); the autoscaler reads its traffic through `collect` (the autoscaler's `MetricsSource` port). Nothing here
does I/O.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.activator import VersionGate
from gateway.routes import PathTable, match_extra_path, split_function_path
from nest.contracts.model import InitFailure, InstanceAddress, Route, VersionKey, VersionTraffic

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from gateway.ports import DemandSignal
    from nest.contracts.ids import InstanceId


class RoutingTable:
    """Routes and gates for every function. One per gateway process."""

    def __init__(
        self,
        *,
        demand: DemandSignal | None = None,
        buffer_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes: dict[str, Route] = {}
        self.gates: dict[VersionKey, VersionGate] = {}
        self._demand = demand
        self._buffer_size = buffer_size
        self._clock = clock
        self._paths = PathTable.build({})
        self.async_waiting: Callable[[str], int] | None = None
        """Async tasks of a function the dispatcher holds ready to start: queued work for the autoscaler."""
        self.on_endpoint_removed: Callable[[str], None] | None = None
        """Called with the socket path of an instance that left, so the proxy can drop its idle connections."""

    def connect_demand(self, demand: DemandSignal) -> None:
        """Late binding for wiring: the scaler is built after the table it reads from."""
        self._demand = demand

    def _poke(self, key: VersionKey, waiting: int) -> None:
        if self._demand is not None:
            self._demand.poke(key, waiting)

    def gate(self, key: VersionKey) -> VersionGate:
        gate = self.gates.get(key)
        if gate is None:
            gate = VersionGate(key, buffer_size=self._buffer_size, on_demand=self._poke, clock=self._clock)
            self.gates[key] = gate
        return gate

    # what the proxy asks

    def resolve(self, path: str) -> tuple[str, str, Route | None]:
        """(function name, path the function sees, its route or None if there is no such function)."""
        split = split_function_path(path)
        if split is None:
            split = match_extra_path(self._paths, path)
            if split is None:
                return "", path, None
        name, subpath = split
        return name, subpath, self.routes.get(name)

    # the controller's RoutePublisher port

    def set_route(self, route: Route) -> None:
        """Send the function's traffic to `route.key` from now on (a new version goes live at once)."""
        previous = self.routes.get(route.key.function)
        self.routes[route.key.function] = route
        self.gate(route.key)
        if previous is None or previous.paths != route.paths:
            self._rebuild_paths()
        if previous is not None and previous.key != route.key:
            self._drop_if_idle(previous.key)

    def remove_route(self, function: str) -> None:
        route = self.routes.pop(function, None)
        if route is not None:
            self._rebuild_paths()
            self._drop_if_idle(route.key)

    def set_endpoints(self, key: VersionKey, addresses: Iterable[InstanceAddress]) -> None:
        gate = self.gate(key)
        before = {endpoint.socket_path for endpoint in gate.endpoints}
        gate.set_endpoints(addresses)
        after = {endpoint.socket_path for endpoint in gate.endpoints}
        if self.on_endpoint_removed is not None:
            for socket_path in before - after:
                self.on_endpoint_removed(socket_path)
        self._drop_if_idle(key)

    def report_init_failure(self, failure: InitFailure) -> None:
        gate = self.gates.get(failure.key)
        if gate is not None:
            gate.fail(failure)

    def remove_endpoint(self, key: VersionKey, instance_id: InstanceId) -> None:
        """The proxy saw an instance go away (recycle, connection refused): stop routing to it now."""
        gate = self.gates.get(key)
        if gate is not None:
            gate.remove_endpoint(instance_id)

    # the autoscaler's MetricsSource port

    def collect(self, now: float) -> list[VersionTraffic]:
        """One interval of traffic per version, resetting the interval counters."""
        result = []
        for key, gate in list(self.gates.items()):
            traffic = gate.traffic
            mean, interval, completed = traffic.collect(now)
            queued = traffic.queued
            if self.async_waiting is not None and self._is_live(key):
                queued += self.async_waiting(key.function)
            arrived = traffic.take_arrived()
            result.append(VersionTraffic(key, mean, traffic.in_flight, queued, completed, interval, arrived=arrived))
            self._drop_if_idle(key)
        return result

    def _is_live(self, key: VersionKey) -> bool:
        route = self.routes.get(key.function)
        return route is not None and route.key == key

    def _drop_if_idle(self, key: VersionKey) -> None:
        route = self.routes.get(key.function)
        gate = self.gates.get(key)
        if gate is not None and (route is None or route.key != key) and gate.idle():
            del self.gates[key]

    def _rebuild_paths(self) -> None:
        self._paths = PathTable.build({name: route.paths for name, route in self.routes.items() if route.paths})
