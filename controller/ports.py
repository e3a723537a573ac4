"""Ports the controller consumes, declared in the controller's terms.

`RoutePublisher` is where the controller announces which version of a function is live and which instances
of a version are ready; the gateway's `RoutingTable` satisfies it structurally (`nest/wiring/embedded.py` checks
the fit). The controller never imports the gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nest.contracts.model import InitFailure, InstanceAddress, Route, VersionKey


class RoutePublisher(Protocol):
    def set_route(self, route: Route) -> None:
        """Send the function's traffic to `route.key` from now on."""

    def remove_route(self, function: str) -> None:
        """The function is gone: answer 404 for it."""

    def set_endpoints(self, key: VersionKey, addresses: Iterable[InstanceAddress]) -> None:
        """The complete set of ready instances of one version; ones left out drain."""

    def report_init_failure(self, failure: InitFailure) -> None:
        """An instance of the version could not load its code: fail requests waiting for it."""
