"""The node cache counts a package's bytecode sidecar, evicts it with the package, and removes orphan sidecars."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from controller.codestore.cachejanitor import SIDECAR_SUFFIX, TRASH_PREFIX, CacheJanitor, NodeCache, tree_size
from runtime.loading import SIDECAR_SUFFIX as RUNTIME_SUFFIX, BytecodeCache, sidecar_for
from tests.unit.controller.test_cachejanitor import Packages, age, materialise

if TYPE_CHECKING:
    from pathlib import Path


def bytecode(tree: Path, *names: str) -> Path:
    """Cache a few modules' code in `tree`'s sidecar, as an instance does."""
    cache = BytecodeCache(sidecar_for(str(tree)))
    for name in names:
        cache.code(name, str(tree / name), 20, lambda: b"VALUE = 1\n" * 2)
    cache.flush()
    assert cache.written == len(names)
    return tree.with_name(tree.name + SIDECAR_SUFFIX)


def test_the_runtime_and_the_janitor_agree_on_the_sidecar_name() -> None:
    assert SIDECAR_SUFFIX == RUNTIME_SUFFIX
    assert sidecar_for("/cache/ab/abcd") == "/cache/ab/abcd" + SIDECAR_SUFFIX


def test_a_package_size_counts_its_sidecar_and_follows_it_as_it_grows(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _, tree = materialise(root, tmp_path, 1)
    cache = NodeCache(root)
    [bare] = cache.scan(set())
    assert bare.size == tree_size(tree)
    sidecar = bytecode(tree, "a.py")
    [one] = cache.scan(set())
    assert one.size == tree_size(tree) + tree_size(sidecar) > bare.size
    bytecode(tree, "b.py")
    [two] = cache.scan(set())
    assert two.size == tree_size(tree) + tree_size(sidecar) > one.size
    assert cache.orphans == []


async def test_eviction_takes_the_sidecar_and_an_orphan_sidecar_goes_too(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (old, old_tree), (kept, kept_tree) = made = [materialise(root, tmp_path, seed) for seed in range(2)]
    for when, (_, tree) in enumerate(made):
        age(tree, 1000 + when)
    old_sidecar, kept_sidecar = bytecode(old_tree, "a.py"), bytecode(kept_tree, "a.py")
    cache = NodeCache(root)
    sizes = {entry.digest: entry.size for entry in cache.scan(set())}
    janitor = CacheJanitor(cache, budget_bytes=sizes[kept], packages=Packages())
    assert (await janitor.sweep()).evict == (old,)
    assert not old_tree.exists()
    assert not old_sidecar.exists()
    assert kept_sidecar.is_dir()
    assert not [name for name in os.listdir(old_tree.parent) if name.startswith(TRASH_PREFIX)]
    orphan = bytecode(old_tree, "a.py")  # e.g. an eviction interrupted between its two renames
    assert not old_tree.exists()
    await janitor.sweep()
    assert not orphan.exists()
    assert kept_sidecar.is_dir(), "a sidecar whose package is there stays"
    assert {entry.digest for entry in cache.scan(set())} == {kept}


def test_an_interrupted_eviction_leaves_no_sidecar_behind(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, tree = materialise(root, tmp_path, 1)
    bytecode(tree, "a.py")
    trashed = NodeCache(root).trash(digest)
    assert trashed is not None
    assert trashed.with_name(trashed.name + SIDECAR_SUFFIX).is_dir()
    assert NodeCache(root).purge_trash() == 2
    assert [name for name in os.listdir(tree.parent) if not name.endswith(".lock")] == []


def test_a_file_where_the_sidecar_belongs_is_counted_and_evicted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest, tree = materialise(root, tmp_path, 1)
    in_the_way = tree.with_name(tree.name + SIDECAR_SUFFIX)
    in_the_way.write_bytes(b"x" * 100)
    cache = NodeCache(root)
    [entry] = cache.scan(set())
    assert entry.size == tree_size(tree) + 100
    trashed = cache.trash(digest)
    assert trashed is not None
    cache.delete([trashed])
    assert [name for name in os.listdir(tree.parent) if not name.endswith(".lock")] == []
