"""bench_bytecode: importing a function's own modules on a node, without and with the bytecode sidecar.

A package of generated modules (bench_code_fetch's `generate`, every module imported, not just main's five) is
materialised in a node cache once per layout (`tree`, `archive`). Each trial then imports all of its modules as a
cold start would, three ways, interleaved:

- `compile`: the sidecar cannot be written (a file is in its place), so every module is compiled, which is what
  every cold start paid before the sidecar (plus one failed `makedirs` per module);
- `first`: an empty sidecar, the first start on a node: compiled, each pyc handed to the writer thread
  (`first_written`: until the last one is on disk);
- `second`: the sidecar the first start wrote: every module loaded from its pyc.

Figures are medians over the trials, in ms, and `second_vs_compile` is how many times faster a later start
imports. Prints one JSON line.

Run: flock /tmp/nest/bench.lock .venv/bin/python -m tests.bench.bench_bytecode [--trials 9] [--megabytes 2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import Codec, Layout
from runtime.archive import install
from runtime.loading import BytecodeCache, install_tree, sidecar_for
from runtime.unpack import cache_dir_for, ensure_package
from tests.bench.bench_code_fetch import generate
from tests.fakes.chunk_source import FakeChunkSource

MODES = ("compile", "first", "second")


def modules_of(root: Path) -> list[str]:
    return sorted(".".join(path.relative_to(root).with_suffix("").parts) for path in root.glob("pkg_*/module_*.py"))


def materialise(source_root: Path, cache_root: Path, layout: Layout) -> str:
    built = build_chunked(source_root, codec=Codec.LZ4, layout=layout)
    target = cache_dir_for(cache_root, built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    return str(target)


def prepare(code_dir: str, mode: str, trial: int) -> None:
    """Set the sidecar up for `mode`. A used one is renamed aside, not deleted: deleting 160 files just before a
    timed run made the next one's writes wait on the filesystem, which a node's first start never does."""
    sidecar = sidecar_for(code_dir)
    if mode in ("compile", "first") and os.path.lexists(sidecar):
        os.rename(sidecar, f"{sidecar}-{mode}-{trial}")
    if mode == "compile":
        Path(sidecar).write_text("in the way: nothing is cached")


def import_all(code_dir: str, layout: Layout, modules: list[str]) -> tuple[float, float, BytecodeCache]:
    """Milliseconds to import every module with a fresh finder (as a new instance would), then until the last
    pyc is written (the writer thread runs on after the imports), and the finder's cache."""
    hooks, meta = list(sys.path_hooks), list(sys.meta_path)
    started = time.perf_counter()
    archive = layout is Layout.ARCHIVE
    cache = install(code_dir).bytecode if archive else install_tree(code_dir, sidecar_for(code_dir))
    sys.path.insert(0, code_dir)
    try:
        for name in modules:
            importlib.import_module(name)
        imported = time.perf_counter()
        cache.flush()
        return (imported - started) * 1000, (time.perf_counter() - started) * 1000, cache
    finally:
        sys.path.remove(code_dir)
        sys.path_hooks[:], sys.meta_path[:] = hooks, meta
        for name in [m for m in sys.modules if m.startswith("pkg_")]:
            del sys.modules[name]
        sys.path_importer_cache.clear()


def run(trials: int, megabytes: float) -> dict[str, object]:
    result: dict[str, object] = {"bench": "bytecode", "trials": trials}
    with tempfile.TemporaryDirectory() as scratch:
        source_root = Path(scratch) / "fn"
        _, size = generate(source_root, megabytes)
        modules = modules_of(source_root)
        result.update(modules=len(modules), source_bytes=size)
        for layout in (Layout.TREE, Layout.ARCHIVE):
            code_dir = materialise(source_root, Path(scratch) / f"cache-{layout.value}", layout)
            times: dict[str, list[float]] = {mode: [] for mode in (*MODES, "first_written")}
            for trial in range(trials):
                for mode in MODES:
                    prepare(code_dir, mode, trial)
                    elapsed, written, cache = import_all(code_dir, layout, modules)
                    assert (cache.compiled == 0) == (mode == "second"), (mode, cache.compiled)
                    times[mode].append(elapsed)
                    if mode == "first":
                        times["first_written"].append(written)
            medians = {mode: round(statistics.median(values), 2) for mode, values in times.items()}
            result[layout.value] = {
                **{f"{mode}_ms_p50": value for mode, value in medians.items()},
                "second_vs_compile": round(medians["compile"] / medians["second"], 1),
                "first_vs_compile": round(medians["first"] / medians["compile"], 2),
                "sidecar_bytes": sum(p.stat().st_size for p in Path(sidecar_for(code_dir)).iterdir()),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--megabytes", type=float, default=2.0)
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.trials, arguments.megabytes)))


if __name__ == "__main__":
    main()
