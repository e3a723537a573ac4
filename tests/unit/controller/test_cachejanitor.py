"""The node cache's janitor on a real directory: sizes, marking use, rename-then-delete, the lock, the budget."""

from __future__ import annotations

import asyncio
import fcntl
import os
from typing import TYPE_CHECKING

from controller.codestore.cachejanitor import TRASH_PREFIX, CacheJanitor, NodeCache, tree_size
from nest.cli.packaging import build_chunked
from nest.contracts.chunks import ChunkRef, Codec
from runtime.unpack import ensure_package
from tests.unit.controller.test_chunkstore import sources

if TYPE_CHECKING:
    from collections.abc import Set
    from pathlib import Path

    from nest.cli.packaging import BuiltPackage
    from nest.contracts.chunks import PackageManifest


class Source:
    """A dict-backed `ChunkSource` for `runtime/unpack.py`."""

    def __init__(self, built: BuiltPackage) -> None:
        self.built = built
        self.chunks = {ref.digest: chunk for ref, chunk in zip(built.manifest.chunks, built.chunks, strict=True)}

    def manifest(self, digest: str) -> PackageManifest:
        assert digest == self.built.manifest.digest
        return self.built.manifest

    def chunk(self, ref: ChunkRef, buffer: bytearray | None = None) -> bytes:
        return self.chunks[ref.digest]


def materialise(root: Path, tmp_path: Path, seed: int, *, files: int = 3) -> tuple[str, Path]:
    built = build_chunked(sources(tmp_path / f"fn{seed}", files=files, size=2000, seed=seed), codec=Codec.ZSTD)
    digest = built.manifest.digest
    done = ensure_package(root / digest[:2] / digest, digest, Source(built))
    assert tree_size(done.code_dir) == built.manifest.unpacked_bytes
    return digest, done.code_dir


def age(path: Path, when: float) -> None:
    os.utime(path, (when, when))


class Packages:
    def __init__(self) -> None:
        self.running: set[str] = set()
        self.current: set[str] = set()

    def __call__(self) -> tuple[Set[str], Set[str]]:
        return self.running, self.current


def test_scan_sizes_trees_and_marks_what_runs_as_used_now(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, tree = materialise(root, tmp_path, 1)
    age(tree, 100)
    (root / "ab").mkdir()
    (root / "ab" / ".staging-xyz").mkdir()
    cache = NodeCache(root, clock=lambda: 5000.0)
    [entry] = cache.scan(set())
    assert (entry.digest, entry.last_used) == (digest, 100)
    assert entry.size == tree_size(tree) > 5000
    [entry] = cache.scan({digest})
    assert entry.last_used == 5000


def test_trash_renames_first_and_a_new_materialisation_is_unharmed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    built = build_chunked(sources(tmp_path / "fn", files=3, size=2000), codec=Codec.ZSTD)
    digest = built.manifest.digest
    code_dir = root / digest[:2] / digest
    ensure_package(code_dir, digest, Source(built))
    cache = NodeCache(root)
    trashed = cache.trash(digest)
    assert trashed is not None
    assert trashed.name.startswith(TRASH_PREFIX)
    assert not code_dir.exists()
    again = ensure_package(code_dir, digest, Source(built))  # a start racing the deletion
    assert not again.cached
    cache.delete([trashed])
    assert not trashed.exists()
    assert (code_dir / "main.py").is_file(), "deleting the trash left the new tree alone"


def test_a_package_being_materialised_is_not_trashed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, tree = materialise(root, tmp_path, 1)
    lock = os.open(tree.parent / f".{digest}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert NodeCache(root).trash(digest) is None
    finally:
        os.close(lock)
    assert tree.is_dir()


def test_trash_an_interrupted_eviction_left_is_purged(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, tree = materialise(root, tmp_path, 1)
    left = tree.parent / f"{TRASH_PREFIX}{digest}-dead"
    tree.rename(left)
    assert NodeCache(root).purge_trash() == 1
    assert not left.exists()


async def test_a_sweep_keeps_the_budget_old_versions_first_never_what_runs(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    made = [materialise(root, tmp_path, seed) for seed in range(4)]
    for when, (_, tree) in enumerate(made):
        age(tree, 1000 + when)
    (old, _), (current, _), (running, _), (newest, _) = made
    packages = Packages()
    packages.running, packages.current = {running}, {current}
    cache = NodeCache(root)
    sizes = {entry.digest: entry.size for entry in cache.scan(set())}
    budget = sum(sizes.values()) - sizes[old] - 1  # one more than the oldest must go
    janitor = CacheJanitor(cache, budget_bytes=budget, packages=packages)
    selection = await janitor.sweep()
    assert selection.evict == (old, newest), "old versions first, oldest first; the current package is kept"
    left = {entry.digest for entry in cache.scan(set())}
    assert left == {current, running}
    assert janitor.evicted == 2
    janitor.budget_bytes = 0
    assert (await janitor.sweep()).evict == (current,)
    assert {entry.digest for entry in cache.scan(set())} == {running}
    assert not [name for name in os.listdir(root / running[:2]) if name.startswith(TRASH_PREFIX)]


async def test_a_poke_from_another_thread_wakes_the_janitor(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, _ = materialise(root, tmp_path, 1)
    janitor = CacheJanitor(NodeCache(root), budget_bytes=0, packages=Packages(), interval_s=3600, settle_s=0)
    task = asyncio.create_task(janitor.run())
    try:
        await asyncio.sleep(0)  # run() takes the loop, then waits (an hour) for a poke
        await asyncio.to_thread(janitor.poke)
        await asyncio.wait_for(janitor.swept.wait(), 10)
        assert janitor.evicted == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (root / digest[:2] / digest).exists()
