"""The bytecode sidecar: a second start loads pycs, bad pycs are replaced, an unwritable sidecar changes nothing."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import Codec, Layout
from runtime.archive import install
from runtime.loading import BytecodeCache, header, install_tree, pyc_name, sidecar_for
from runtime.unpack import cache_dir_for, ensure_package
from tests.fakes.chunk_source import FakeChunkSource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NAMES = ("bc_main", "bc_pkg")


def _forget() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in NAMES]:
        del sys.modules[name]


@pytest.fixture(params=["tree", "archive"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], BytecodeCache]]:
    """A fresh "instance" of one package in a node cache, per call: imports `bc_main` and answers its cache."""
    root = tmp_path / "fn"
    (root / "bc_pkg").mkdir(parents=True)
    (root / "nest.yaml").write_text("name: hello\n")
    (root / "bc_main.py").write_text("from bc_pkg.leaf import VALUE\n")
    (root / "bc_pkg" / "__init__.py").write_text("")
    (root / "bc_pkg" / "leaf.py").write_text("VALUE = 42\n")
    layout = Layout.ARCHIVE if request.param == "archive" else Layout.TREE
    built = build_chunked(root, codec=Codec.LZ4, layout=layout)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    code_dir = str(target)
    hooks, meta = list(sys.path_hooks), list(sys.meta_path)

    def one() -> BytecodeCache:
        sys.path_hooks[:], sys.meta_path[:] = hooks, meta
        _forget()
        if request.param == "archive":
            cache = install(code_dir).bytecode
        else:
            cache = install_tree(code_dir, sidecar_for(code_dir))
            sys.path.insert(0, code_dir)
        assert importlib.import_module("bc_main").VALUE == 42
        cache.flush()
        return cache

    yield one
    sys.path_hooks[:], sys.meta_path[:] = hooks, meta
    while code_dir in sys.path:
        sys.path.remove(code_dir)
    _forget()


def _sidecar(cache: BytecodeCache) -> list[str]:
    return sorted(os.listdir(cache.sidecar))


def test_the_second_start_loads_every_module_from_its_pyc(start: Callable[[], BytecodeCache]) -> None:
    first = start()
    assert (first.compiled, first.written, first.loaded) == (3, 3, 0)
    assert _sidecar(first) == ["bc_main.pyc", "bc_pkg%2F__init__.pyc", "bc_pkg%2Fleaf.pyc"]
    second = start()
    assert (second.compiled, second.written, second.loaded) == (0, 0, 3)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"\x00\x00\x00\x00" + data[4:],  # another interpreter's magic number
        lambda data: data[:20],  # cut short
        lambda data: data[:16] + b"\xff" * 40,  # not marshal
        lambda data: data[:12] + bytes(4) + data[16:],  # another source size
    ],
)
def test_a_bad_pyc_is_ignored_and_replaced(
    start: Callable[[], BytecodeCache], damage: Callable[[bytes], bytes]
) -> None:
    leaf = os.path.join(start().sidecar, pyc_name("bc_pkg/leaf.py"))
    good = Path(leaf).read_bytes()
    Path(leaf).write_bytes(damage(good))
    again = start()
    assert (again.compiled, again.written, again.loaded) == (1, 1, 2)
    assert Path(leaf).read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    assert start().loaded == 3


def test_an_unwritable_sidecar_only_means_compiling(start: Callable[[], BytecodeCache], tmp_path: Path) -> None:
    first = start()
    for name in _sidecar(first):
        os.unlink(os.path.join(first.sidecar, name))
    os.rmdir(first.sidecar)
    with open(first.sidecar, "w") as file:  # a file where the directory should be: every write fails, even as root
        file.write("in the way")
    for _ in range(2):
        cache = start()
        assert (cache.compiled, cache.written, cache.loaded) == (3, 0, 0)
    assert not [name for name in os.listdir(os.path.dirname(first.sidecar)) if name.endswith(".tmp")]


def test_the_tree_hook_serves_only_the_package(tmp_path: Path) -> None:
    code_dir = str(tmp_path / "ab" / "abcd")
    os.makedirs(f"{code_dir}/pkg")
    hooks = list(sys.path_hooks)
    try:
        install_tree(code_dir, sidecar_for(code_dir))
        hook = sys.path_hooks[0]
        assert hook(code_dir).path == code_dir  # type: ignore[attr-defined]
        assert hook(f"{code_dir}/pkg").path == f"{code_dir}/pkg"  # type: ignore[attr-defined]
        for elsewhere in (os.path.dirname(os.__file__), f"{code_dir}x", str(tmp_path)):
            with pytest.raises(ImportError):
                hook(elsewhere)  # the stdlib, site-packages, a sibling keep their own finder and __pycache__
    finally:
        sys.path_hooks[:] = hooks


def test_a_pyc_header_names_this_interpreter_and_the_source_size() -> None:
    assert header(300) == importlib.util.MAGIC_NUMBER + bytes(8) + (300).to_bytes(4, "little")
    assert pyc_name("a%b/c.py") == "a%25b%2Fc.pyc"
    assert sidecar_for("/cache/ab/abcd/") == "/cache/ab/abcd.pyc"


def test_a_pyc_compiled_at_another_path_names_the_current_one(tmp_path: Path) -> None:
    source = b"def inner():\n    return 1\n"
    first = BytecodeCache(str(tmp_path / "sidecar"))
    first.code("a.py", "/old/a.py", len(source), lambda: source)
    first.flush()
    cache = BytecodeCache(str(tmp_path / "sidecar"))
    code = cache.code("a.py", "/new/a.py", len(source), lambda: source)
    assert cache.loaded == 1
    namespace: dict[str, object] = {}
    exec(code, namespace)
    assert code.co_filename == "/new/a.py"
    assert namespace["inner"].__code__.co_filename == "/new/a.py"  # type: ignore[attr-defined]


def test_a_pyc_that_cannot_be_written_leaves_no_temporary_and_the_others_are_kept(
    start: Callable[[], BytecodeCache],
) -> None:
    leaf = Path(start().sidecar) / pyc_name("bc_pkg/leaf.py")
    leaf.unlink()
    leaf.mkdir()  # the rename onto it fails
    again = start()
    assert (again.compiled, again.written, again.loaded) == (1, 0, 2)
    assert sorted(p.name for p in leaf.parent.iterdir()) == ["bc_main.pyc", "bc_pkg%2F__init__.pyc", leaf.name]


def test_pycs_are_written_by_one_thread_that_ends_when_none_is_left(tmp_path: Path) -> None:
    cache = BytecodeCache(str(tmp_path / "sidecar"))
    for index in range(20):
        source = f"VALUE = {index}\n".encode()
        cache.code(f"m{index}.py", f"/code/m{index}.py", len(source), lambda source=source: source)
    cache.flush()
    assert cache.written == 20
    assert not [t for t in threading.enumerate() if t.name == "nest-bytecode"]
    again = BytecodeCache(str(tmp_path / "sidecar"))
    assert [again.code(f"m{i}.py", f"/code/m{i}.py", len(f"VALUE = {i}\n"), bytes) for i in range(20)]
    assert (again.loaded, again.compiled) == (20, 0)


def test_two_instances_writing_the_same_pycs_leave_whole_ones(tmp_path: Path) -> None:
    sidecar = str(tmp_path / "sidecar")
    sources = {f"m{index}.py": f"VALUE = {index}\n".encode() * 200 for index in range(30)}
    instances = [BytecodeCache(sidecar), BytecodeCache(sidecar)]
    for name, source in sources.items():  # both miss every pyc, so both writers race on every name
        for instance in instances:
            instance.code(name, f"/code/{name}", len(source), lambda source=source: source)
    for instance in instances:
        instance.flush()
    assert sorted(os.listdir(sidecar)) == sorted(pyc_name(name) for name in sources)
    reader = BytecodeCache(sidecar)
    for name, source in sources.items():
        namespace: dict[str, object] = {}
        exec(reader.code(name, f"/code/{name}", len(source), bytes), namespace)
        assert namespace["VALUE"] == int(name[1:-3])
    assert (reader.loaded, reader.compiled) == (30, 0)
