"""The function service: deploy, list, describe and delete functions; what goes live and how it is served.

Satisfies the gateway's `ControlPlane` port (structurally). A deploy takes the package in safely (chunked:
`codestore/chunkstore.py` verifies and stores it, instances fetch it; a gzip tar from an older client:
`codestore/packages.py` unpacks it), validates `nest.yaml` (errors name the field), derives the immutable version
from the code digest and the canonical configuration, records it (`store/sqlite.py`), then makes it live: the
gateway gets the new route at once and the fleet starts and stops instances for it. Redeploying identical code
and configuration is a no-op. At start-up, `load()` makes every function's latest version live again, so a second
`nest up` on the same data directory serves what the first one did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.backends.base import InstanceSpec
from controller.codestore.chunkstore import ChunkStore
from controller.codestore.packages import code_dir_for, unpack_package
from controller.logs import read_logs
from controller.store.sqlite import VersionRecord
from nest.contracts.chunks import BUNDLE_MAGIC, PackageLimits
from nest.contracts.errors import InvalidInput, NotFound
from nest.contracts.ids import FunctionName, InstanceId, VersionId
from nest.contracts.manifest import Manifest, parse_manifest, validate_name
from nest.contracts.model import Route, VersionKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection
    from pathlib import Path

    from controller.codestore.chunkstore import StoredPackage
    from controller.codestore.packages import Package
    from controller.fleet import Fleet
    from controller.ports import RoutePublisher
    from controller.store.sqlite import SqliteStore


logger = logging.getLogger("nest.functions")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    code_root: Path
    log_dir: Path
    public_url: str
    """Base URL users reach the gateway at, for the function URLs we print."""
    max_unpacked_bytes: int = 512 * 1024**2
    pools: Callable[[], Collection[str]] = lambda: ("default", "none")
    """The pools a function may name now (a pools-file reload adds and removes some); a deploy naming another
    is refused (the pool would not exist)."""
    chunk_root: Path | None = None
    """Where chunked packages are kept (`codestore/chunkstore.py`); default `<code_root>/../chunks`."""


def version_of(code_digest: str, manifest: Manifest) -> VersionId:
    """The immutable version id: digest of the code digest and the canonical (validated, defaulted) config."""
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return VersionId(hashlib.sha256(f"{code_digest}\n{canonical}".encode()).hexdigest()[:12])


def route_of(key: VersionKey, manifest: Manifest) -> Route:
    return Route(
        key=key,
        concurrency=manifest.concurrency,
        timeout_s=manifest.timeout,
        max_body_bytes=manifest.max_body,
        methods=frozenset(manifest.http.methods),
        paths=tuple(manifest.http.paths),
        debug=manifest.debug,
        async_spec=manifest.async_.spec(),
    )


def template_of(key: VersionKey, manifest: Manifest, code_dir: Path, *, package: str = "") -> InstanceSpec:
    return InstanceSpec(
        instance_id=InstanceId(""),
        key=key,
        code_dir=code_dir,
        handler=manifest.handler,
        handler_style=manifest.handler_style.value,
        env=dict(manifest.env),
        timeout_s=manifest.timeout,
        memory_bytes=manifest.memory,
        concurrency=manifest.concurrency,
        debug=manifest.debug,
        pool=manifest.pool,
        package=package,
    )


class FunctionService:
    """Functions and their versions, made live on the gateway and the fleet."""

    def __init__(
        self,
        store: SqliteStore,
        fleet: Fleet,
        *,
        publisher: RoutePublisher,
        config: ServiceConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._publisher = publisher
        self._config = config
        self._clock = clock
        self._live: dict[str, tuple[VersionKey, Manifest]] = {}
        self._lock = asyncio.Lock()
        self.chunks = ChunkStore(
            config.chunk_root or config.code_root.parent / "chunks",
            limits=PackageLimits(max_unpacked_bytes=config.max_unpacked_bytes),
        )

    def url_of(self, name: str) -> str:
        return f"{self._config.public_url}/function/{name}"

    async def load(self) -> None:
        """Make every stored function's latest version live (start-up)."""
        for record in await self._store.list_functions():
            version = await self._store.get_version(record.name, record.latest_version)
            if version is not None:
                manifest = parse_manifest(version.manifest_json)
                self._go_live(VersionKey(FunctionName(record.name), VersionId(version.version)), manifest, version)

    def _go_live(self, key: VersionKey, manifest: Manifest, record: VersionRecord) -> None:
        previous = self._live.get(key.function)
        code_dir = code_dir_for(self._config.code_root, record.code_digest)
        package = record.code_digest if self.chunks.has_manifest(record.code_digest) else ""
        takeover = previous[0] if previous is not None and previous[0] != key else None
        self._fleet.register(
            template_of(key, manifest, code_dir, package=package), manifest.scaling_spec(), takeover=takeover
        )
        self._publisher.set_route(route_of(key, manifest))
        self._live[key.function] = (key, manifest)
        if previous is not None and previous[0] != key:
            self._fleet.unregister(previous[0])

    async def deploy(self, name: str, archive: bytes) -> dict[str, Any]:
        validate_name(name)
        if archive.startswith(BUNDLE_MAGIC):
            stored = await asyncio.to_thread(self.chunks.intake, archive)
            try:
                return await self._record(name, stored, {"package": stored.summary()})
            finally:
                self.chunks.unpin(stored.digest)
        # a gzip tar from an older `nest deploy`: unpacked here, once
        package = await asyncio.to_thread(
            unpack_package,
            archive,
            target_root=self._config.code_root,
            max_unpacked_bytes=self._config.max_unpacked_bytes,
        )
        return await self._record(name, package, {})

    async def _record(self, name: str, package: StoredPackage | Package, summary: dict[str, Any]) -> dict[str, Any]:
        """Validate the package's nest.yaml, record the version and make it live (unless it is live already)."""
        manifest = parse_manifest(package.manifest_text)
        if manifest.name != name:
            raise InvalidInput("name", f"nest.yaml names the function {manifest.name!r} but it is deployed as {name!r}")
        pools = self._config.pools()
        if manifest.pool not in pools:
            raise InvalidInput(
                "pool",
                f"unknown pool {manifest.pool!r} (this Nest has: {', '.join(sorted(pools))}); declare it with"
                f" `nest up --pool {manifest.pool}=module,module` or in the pools file, then reload (SIGHUP)",
            )
        key = VersionKey(FunctionName(name), version_of(package.digest, manifest))
        async with self._lock:
            live = self._live.get(name)
            previous = live[0].version if live is not None else None
            if previous == key.version:
                return {"name": name, "version": key.version, "url": self.url_of(name), "created": False, **summary}
            record = VersionRecord(
                function=name,
                version=key.version,
                code_digest=package.digest,
                manifest_json=manifest.model_dump_json(),
                created_at=self._clock(),
            )
            await self._store.put_version(record)
            self._go_live(key, manifest, record)
        return {
            "name": name,
            "version": key.version,
            "url": self.url_of(name),
            "created": True,
            "previous_version": previous,
            **summary,
        }

    def code_file(self, kind: str, digest: str) -> Path:
        """The stored manifest or chunk with this digest (`kind`: manifests | chunks); `NotFound` otherwise."""
        return self.chunks.path_of(kind, digest)

    async def list_functions(self) -> list[dict[str, Any]]:
        result = []
        for record in await self._store.list_functions():
            key = VersionKey(FunctionName(record.name), VersionId(record.latest_version))
            ready, starting = self._fleet.counts(key)
            result.append(
                {
                    "name": record.name,
                    "version": record.latest_version,
                    "url": self.url_of(record.name),
                    "ready": ready,
                    "starting": starting,
                    "updated_at": record.updated_at,
                }
            )
        return result

    async def describe(self, name: str) -> dict[str, Any]:
        record = await self._store.get_function(name)
        if record is None:
            raise NotFound("function", name)
        key = VersionKey(FunctionName(name), VersionId(record.latest_version))
        latest = await self._store.get_version(name, record.latest_version)
        versions = await self._store.list_versions(name)
        failure = self._fleet.last_failure(key)
        return {
            "name": name,
            "version": record.latest_version,
            "url": self.url_of(name),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            # As written in nest.yaml (`async`, not the model's `async_`), whichever way the version was stored.
            "manifest": parse_manifest(latest.manifest_json).model_dump(mode="json", by_alias=True)
            if latest is not None
            else None,
            "versions": [
                {"version": v.version, "created_at": v.created_at, "code_digest": v.code_digest} for v in versions
            ],
            "instances": self._fleet.instances_of(name),
            "cold_starts": self._fleet.cold_starts(name),
            "scaling": self._fleet.scaling_status(key),
            "last_init_error": None
            if failure is None
            else {"error_type": failure.error_type, "detail": failure.detail, "at": failure.at},
        }

    async def delete(self, name: str) -> dict[str, Any]:
        async with self._lock:
            if not await self._store.delete_function(name):
                raise NotFound("function", name)
            live = self._live.pop(name, None)
            self._publisher.remove_route(name)
            if live is not None:
                self._fleet.unregister(live[0])
            keep = await self._store.code_digests()
            try:
                removed = await asyncio.to_thread(self.chunks.remove_unreferenced, keep)
            except OSError as exc:  # the function is gone; what is left is only disk space
                logger.warning("code store clean-up after deleting %s failed: %s", name, exc)
            else:
                logger.info("deleted %s; %d stored package files no version refers to removed", name, removed)
        return {"name": name, "deleted": True}

    def logs(self, name: str, *, tail: int, follow: bool) -> AsyncIterator[bytes]:
        return read_logs(self._config.log_dir / f"{name}.log", tail=tail, follow=follow)
