"""Ports the gateway consumes, declared in the gateway's terms.

`DemandSignal` is satisfied by the autoscaler (`Autoscaler.poke`), `ControlPlane` by the controller's function
service. Neither side imports the other: `nest/wiring/embedded.py` hands the concrete objects in, and mypy checks
the fit there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nest.contracts.model import VersionKey


class DemandSignal(Protocol):
    """Tell the scaler a version needs capacity now (requests are waiting), without waiting for its next tick."""

    def poke(self, key: VersionKey, waiting: int = 1) -> None:
        """`waiting`: how many requests the activator holds for the version now."""


class ControlPlane(Protocol):
    """What the control API (`/api/v1/...`) asks of the controller. Results are JSON-ready dicts."""

    async def deploy(self, name: str, archive: bytes) -> dict[str, Any]: ...

    async def list_functions(self) -> list[dict[str, Any]]: ...

    async def describe(self, name: str) -> dict[str, Any]: ...

    async def delete(self, name: str) -> dict[str, Any]: ...

    def logs(self, name: str, *, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """NDJSON lines of the function's logs (the last `tail`), then new ones as they come if `follow`."""
        ...

    def code_file(self, kind: str, digest: str) -> Path:
        """A stored code-package object (`kind`: manifests | chunks) by digest; raises `NotFound`."""
        ...
