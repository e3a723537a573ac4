"""Keeping a node's package cache within its budget: the I/O and the loop around `nodecache.select_evictions`.

`NodeCache` reads `<data_dir>/cache/<xx>/<digest>` trees (`runtime/unpack.py` writes them): sizes (memoised, a
tree never changes once renamed into place) and last use, which is the directory's mtime, set to now at every
sweep for the packages an instance runs, so the order survives a restart of `nest up`. Materialisation marks
a new tree too (its mtime is when it was written). A start that hits the cache between two sweeps and ends
before the next is not seen: the interval (`INTERVAL_S`) bounds how stale the order can be.

A package's size includes its bytecode sidecar, `<digest>.pyc/` beside it (`runtime/loading.py`: instances
write the compiled code of the package's modules there at their first start on the node). The sidecar grows
while the package is in use, so its size is memoised only as long as its directory's mtime holds (it is flat:
every pyc added changes it; one `stat` per sweep). It is evicted with its package, and a sidecar whose package is
gone (an eviction interrupted between the two renames) is evicted at the next sweep.

Eviction is safe against a concurrent materialisation of the same package: the tree is first renamed to a trash name
beside it (`.trash-<digest>-<random>`, its sidecar to the same name plus `.pyc`), under the same per-package lock
file `runtime/unpack.py` takes (skipped if a materialisation holds it), and only then deleted. From the rename on,
the real name is either absent (a new start materialises it afresh, into its own staging directory) or a complete
new tree; the deletion works on a name nobody else uses. Lock files stay: removing one another process may be
waiting on would let two materialisations run at once. Trash left by a crash is deleted when the janitor starts.

`CacheJanitor` sweeps every `INTERVAL_S`, and `SETTLE_S` after a poke (the code store calls it after a deploy
or a delete, so the new version is live by then). The list of packages in use is read, and the chosen trees
renamed, in one step of the event loop: the fleet cannot start an instance of an evicted package in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import stat
import time
from typing import TYPE_CHECKING

from controller.codestore.nodecache import CacheEntry, Selection, select_evictions
from nest.contracts.chunks import DIGEST

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Set
    from pathlib import Path

logger = logging.getLogger("nest.codecache")

DEFAULT_BUDGET_BYTES = 2 * 1024**3
"""`nest up --code-cache-size` default: hundreds of typical packages, four at the 512 MiB unpacked limit."""
INTERVAL_S = 60.0
SETTLE_S = 1.0
TRASH_PREFIX = ".trash-"
SIDECAR_SUFFIX = ".pyc"
"""`runtime.loading.SIDECAR_SUFFIX` (the controller may not import the runtime; a unit test checks they agree)."""


class NodeCache:
    """The cache directory: what is in it, marking use, and eviction by rename-then-delete."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._clock = clock
        self._sizes: dict[str, int] = {}
        self._sidecars: dict[str, tuple[int, int]] = {}
        """digest -> (the sidecar directory's mtime in ns, its size then)"""
        self.orphans: list[str] = []
        """Digests with a bytecode sidecar but no package, as of the last `scan`."""

    def scan(self, used: Set[str]) -> list[CacheEntry]:
        """Every materialised package; those in `used` are marked as used now first."""
        now = self._clock()
        entries: list[CacheEntry] = []
        sidecars: set[str] = set()
        for shard in self._shards():
            for name in _names(shard):
                if name.endswith(SIDECAR_SUFFIX) and DIGEST.match(name.removesuffix(SIDECAR_SUFFIX)):
                    sidecars.add(name.removesuffix(SIDECAR_SUFFIX))
                if not DIGEST.match(name):
                    continue  # lock files, sidecars, staging and trash directories
                path = shard / name
                try:
                    if name in used:
                        os.utime(path, (now, now), follow_symlinks=False)
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    continue
                if name not in self._sizes:
                    self._sizes[name] = tree_size(path)
                size = self._sizes[name] + self._sidecar_size(name, shard / f"{name}{SIDECAR_SUFFIX}")
                entries.append(CacheEntry(name, size, info.st_mtime))
        seen = {entry.digest for entry in entries}
        self._sizes = {digest: size for digest, size in self._sizes.items() if digest in seen}
        self._sidecars = {digest: known for digest, known in self._sidecars.items() if digest in seen}
        self.orphans = sorted(sidecars - seen)
        return entries

    def _sidecar_size(self, digest: str, path: Path) -> int:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(info.st_mode):
            return info.st_size  # not the runtime's (it then writes nothing); counted, evicted with the package
        known = self._sidecars.get(digest)
        if known is None or known[0] != info.st_mtime_ns:
            known = self._sidecars[digest] = (info.st_mtime_ns, tree_size(path))
        return known[1]

    def trash(self, digest: str, *, orphan: bool = False) -> Path | None:
        """Rename the package's tree and its sidecar out of the way (see the module docstring); None if it is gone
        already or a materialisation of it holds its lock. Quick: call it in the step that decided.

        `orphan`: only the sidecar of a package that is gone (None if the package is back)."""
        shard = self.root / digest[:2]
        descriptor = os.open(shard / f".{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            target = shard / f"{TRASH_PREFIX}{digest}-{os.urandom(4).hex()}"
            if orphan and os.path.lexists(shard / digest):
                return None
            try:
                if not orphan:
                    os.rename(shard / digest, target)
                os.rename(shard / f"{digest}{SIDECAR_SUFFIX}", f"{target}{SIDECAR_SUFFIX}")
            except FileNotFoundError:
                if orphan or not target.exists():
                    return None
        finally:
            os.close(descriptor)  # releases the lock
        self._sizes.pop(digest, None)
        self._sidecars.pop(digest, None)
        return target

    def delete(self, paths: Iterable[Path]) -> None:
        """Delete trashed trees and their sidecars (read-only directories are made writable first)."""
        for path in [found for tree in paths for found in (tree, tree.with_name(tree.name + SIDECAR_SUFFIX))]:
            for directory, _, _ in os.walk(path):
                with contextlib.suppress(OSError):
                    os.chmod(directory, 0o755)
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                path.unlink()  # a file (rmtree leaves it)

    def purge_trash(self) -> int:
        """Delete what an interrupted eviction left; returns how many trees."""
        left = [shard / name for shard in self._shards() for name in _names(shard) if name.startswith(TRASH_PREFIX)]
        self.delete(left)
        return len(left)

    def _shards(self) -> list[Path]:
        return [shard for shard in sorted(self.root.glob("??")) if shard.is_dir() and not shard.is_symlink()]


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def tree_size(root: Path) -> int:
    """Bytes of the regular files under `root` (symlinks not followed)."""
    total = 0
    pending = [str(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as scan:
                for entry in scan:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


class CacheJanitor:
    """Sweeps the node cache periodically and when poked; `packages()` answers (in use, current) digests."""

    def __init__(
        self,
        cache: NodeCache,
        *,
        budget_bytes: int,
        packages: Callable[[], tuple[Set[str], Set[str]]],
        interval_s: float = INTERVAL_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.cache = cache
        self.budget_bytes = budget_bytes
        self._packages = packages
        self._interval_s = interval_s
        self._settle_s = settle_s
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.evicted = 0
        """Packages evicted since start (for tests and logs)."""
        self.last: Selection | None = None
        self.swept = asyncio.Event()
        """Set after each sweep of `run` (tests wait on it)."""

    def poke(self) -> None:
        """Sweep soon. Safe from any thread (the code store calls it from its worker threads)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        purged = await asyncio.to_thread(self.cache.purge_trash)
        if purged:
            logger.info("code cache: deleted %d trees an interrupted eviction left", purged)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            if self._wake.is_set():
                await asyncio.sleep(self._settle_s)  # the deploy or delete that poked makes its version live
                self._wake.clear()
            try:
                await self.sweep()
            except OSError as exc:  # disk trouble: the next sweep tries again; serving is unaffected
                logger.warning("code cache sweep failed: %s", exc)
            self.swept.set()

    async def sweep(self) -> Selection:
        """Mark what is in use, choose, trash the chosen (in this step of the loop), then delete them."""
        running, _ = self._packages()
        entries = await asyncio.to_thread(self.cache.scan, set(running))
        running_now, current = self._packages()  # instances may have started while the scan ran
        selection = select_evictions(
            entries, budget=self.budget_bytes, in_use=set(running) | set(running_now), current=current
        )
        trashed = [path for digest in selection.evict if (path := self.cache.trash(digest)) is not None]
        orphans = [path for digest in self.cache.orphans if (path := self.cache.trash(digest, orphan=True))]
        if orphans:
            await asyncio.to_thread(self.cache.delete, orphans)
        if trashed:
            await asyncio.to_thread(self.cache.delete, trashed)
            self.evicted += len(trashed)
            logger.info(
                "code cache: evicted %d packages (%s); %s of the %s budget in use",
                len(trashed),
                human(selection.freed),
                human(selection.kept),
                human(self.budget_bytes),
            )
        if selection.kept > self.budget_bytes:
            logger.warning(
                "code cache: %s in packages running instances use, over the %s budget (--code-cache-size)",
                human(selection.kept),
                human(self.budget_bytes),
            )
        self.last = selection
        return selection


def human(size: int) -> str:
    """`1536` -> `1.5 KiB`: sizes in log lines."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
