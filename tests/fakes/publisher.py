"""`FakeRoutePublisher`: what the controller told the gateway (the controller's `RoutePublisher` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nest.contracts.model import InitFailure, InstanceAddress, Route, VersionKey


class FakeRoutePublisher:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.endpoints: dict[VersionKey, list[InstanceAddress]] = {}
        self.failures: list[InitFailure] = []

    def set_route(self, route: Route) -> None:
        self.routes[route.key.function] = route

    def remove_route(self, function: str) -> None:
        self.routes.pop(function, None)

    def set_endpoints(self, key: VersionKey, addresses: Iterable[InstanceAddress]) -> None:
        self.endpoints[key] = list(addresses)

    def report_init_failure(self, failure: InitFailure) -> None:
        self.failures.append(failure)
