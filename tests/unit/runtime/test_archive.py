from __future__ import annotations

import importlib
import importlib.machinery
import importlib.resources
import marshal
import os
import pkgutil
import shutil
import sys
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import MAX_CHUNK_BYTES, ChunkRef, Codec, Layout
from nest.contracts.errors import InvalidInput
from runtime.archive import ARCHIVE_FILE, ARCHIVE_INDEX, CHUNKS_KEPT, LEGACY_FILE, build_index, install, is_archive
from runtime.unpack import cache_dir_for, ensure_package
from tests.fakes.chunk_source import FakeChunkSource

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NAMES = ("archived_main", "archived_pkg", "archived_ns", "archived_files")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "fn"
    (root / "archived_pkg" / "sub").mkdir(parents=True)
    (root / "archived_ns").mkdir()
    (root / "nest.yaml").write_text("name: hello\n")
    (root / "archived_main.py").write_text("from archived_pkg.sub.leaf import VALUE\nfrom archived_ns import plain\n")
    (root / "archived_pkg" / "__init__.py").write_text("INIT = True\n")
    (root / "archived_pkg" / "sub" / "__init__.py").write_text("")
    (root / "archived_pkg" / "sub" / "leaf.py").write_text("VALUE = 42\n")
    (root / "archived_pkg" / "data.txt").write_text("hello data\n")
    (root / "archived_ns" / "plain.py").write_text("import os\nHERE = os.path.dirname(__file__)\n")
    (root / "archived_files").mkdir()
    (root / "archived_files" / "__init__.py").write_text("")
    (root / "archived_files" / "data.txt").write_text("hello data\n")
    (root / "archived_files" / "reader.py").write_text(
        "import os\nwith open(os.path.join(os.path.dirname(__file__), 'latest.txt')) as file:\n    TEXT = file.read()\n"
    )
    (root / "archived_files" / "latest.txt").symlink_to("data.txt")
    (root / "archived_files" / "alias.py").symlink_to("../archived_pkg/sub/leaf.py")
    extension = _stdlib_extension()
    if extension is not None:  # a C extension with a pure-Python fallback beside it, as mypyc-built packages ship
        name, path = extension
        shutil.copy(path, root / "archived_files" / os.path.basename(path))
        (root / "archived_files" / f"{name}.py").write_text("PURE = True\n")
    built = build_chunked(root, codec=Codec.LZ4, layout=Layout.ARCHIVE)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    finder = install(str(target))
    yield str(target)
    finder.uninstall()
    for name in [m for m in sys.modules if m.split(".")[0] in NAMES]:
        del sys.modules[name]


def _stdlib_extension() -> tuple[str, str] | None:
    """(module name, file) of a standard-library C extension built as a shared library, if this Python has one."""
    for name in ("_bisect", "_heapq", "_json", "_random"):
        path = getattr(importlib.import_module(name), "__file__", None)
        if path and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return name, path
    return None


def test_an_archive_is_one_file_and_modules_import_from_it(archive: str) -> None:
    assert is_archive(archive)
    assert sorted(os.listdir(archive)) == sorted(
        [ARCHIVE_FILE, ARCHIVE_INDEX, "archived_files", "archived_pkg", "nest.yaml"]
    )
    main = importlib.import_module("archived_main")
    assert main.VALUE == 42
    assert main.__file__ == f"{archive}/archived_main.py"
    package = importlib.import_module("archived_pkg")
    assert package.INIT
    assert package.__path__ == [f"{archive}/archived_pkg"]
    assert f"{archive}/archived_ns" == importlib.import_module("archived_ns.plain").HERE


def test_package_data_is_served_by_the_loader(archive: str) -> None:
    assert pkgutil.get_data("archived_pkg", "data.txt") == b"hello data\n"
    with pytest.raises(FileNotFoundError):
        pkgutil.get_data("archived_pkg", "missing.txt")


def test_importlib_resources_reads_an_archive_as_a_tree(archive: str) -> None:
    files = importlib.resources.files("archived_pkg")
    assert (files / "data.txt").read_text() == "hello data\n"
    assert files.joinpath("sub", "leaf.py").read_bytes() == b"VALUE = 42\n"
    assert sorted(item.name for item in files.iterdir()) == ["__init__.py", "data.txt", "sub"]
    assert (files / "sub").is_dir()
    assert not (files / "sub").is_file()
    assert (files / "data.txt").is_file()
    assert not (files / "missing.txt").is_file()
    assert not (files / "missing").is_dir()
    with pytest.raises(FileNotFoundError):
        (files / "missing.txt").read_bytes()
    with pytest.raises(ValueError, match="read-only"):
        (files / "data.txt").open("w")
    assert (importlib.resources.files("archived_pkg.sub") / "leaf.py").is_file()  # a subpackage's own directory


def test_pkgutil_lists_the_modules_of_an_archive_as_of_a_tree(archive: str) -> None:
    package = importlib.import_module("archived_pkg")
    assert [(m.name, m.ispkg) for m in pkgutil.iter_modules(package.__path__)] == [("sub", True)]
    sub = importlib.import_module("archived_pkg.sub")
    assert [m.name for m in pkgutil.iter_modules(sub.__path__, "archived_pkg.sub.")] == ["archived_pkg.sub.leaf"]
    top = {m.name: m.ispkg for m in pkgutil.iter_modules([archive])}
    assert top == {"archived_main": False, "archived_ns": True, "archived_pkg": True, "archived_files": True}
    assert list(pkgutil.iter_modules([f"{archive}/no_such_dir"])) == []
    finder = next(f for f in sys.meta_path if getattr(f, "code_dir", None) == archive)
    for elsewhere in ("", "relative/dir", os.path.dirname(archive)):  # the cwd entry of sys.path among them
        with pytest.raises(ImportError):
            finder.listing(elsewhere)
    assert importlib.import_module("archived_pkg.sub.leaf").VALUE == 42  # imports still go through the finder


def test_the_files_that_are_not_sources_are_files_on_disk(archive: str) -> None:
    on_disk = {
        os.path.relpath(os.path.join(directory, name), archive)
        for directory, _, names in os.walk(archive)
        for name in names
    }
    extension = _stdlib_extension()
    shipped = {f"archived_files/{os.path.basename(extension[1])}"} if extension else set()
    assert on_disk == {
        ARCHIVE_FILE,
        ARCHIVE_INDEX,
        "nest.yaml",
        "archived_pkg/data.txt",
        "archived_files/data.txt",
        "archived_files/latest.txt",
    } | (shipped)
    assert os.readlink(f"{archive}/archived_files/latest.txt") == "data.txt"  # a link to a source is not made
    assert oct(os.stat(f"{archive}/archived_pkg/data.txt").st_mode & 0o777) == "0o444"
    assert importlib.import_module("archived_files.reader").TEXT == "hello data\n"  # open() beside __file__
    assert importlib.import_module("archived_files.alias").VALUE == 42  # a link to a source imports from the index


def test_a_c_extension_is_imported_from_its_file_before_the_source_beside_it(archive: str) -> None:
    extension = _stdlib_extension()
    if extension is None:
        pytest.skip("this Python builds its standard library's C extensions in (no shared library to copy)")
    name, path = extension
    module = importlib.import_module(f"archived_files.{name}")
    assert module.__file__ == f"{archive}/archived_files/{os.path.basename(path)}"
    assert not hasattr(module, "PURE")
    listed = {m.name for m in pkgutil.iter_modules(importlib.import_module("archived_files").__path__)}
    assert listed == {"alias", "reader", name}


def test_unknown_modules_fall_through_to_the_other_finders(archive: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("archived_pkg.nothing_here")
    assert importlib.import_module("json").__name__ == "json"


@pytest.fixture
def multi_chunk(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A zstd archive of ~6 chunks: modules in several of them and a data file spanning two."""
    root = tmp_path / "fn"
    (root / "spread").mkdir(parents=True)
    (root / "nest.yaml").write_text("name: spread\n")
    for number in range(40):  # ~150 KiB each of compressible source
        body = "".join(f"NAME_{number}_{line} = {line} * {number}\n" for line in range(6000))
        (root / "spread" / f"m{number:02d}.py").write_text(body + f"LAST = {number}\n")
    (root / "spread" / "__init__.py").write_text("")
    (root / "spread" / "zz_big.dat").write_bytes(bytes(range(256)) * ((MAX_CHUNK_BYTES + 5000) // 256))
    built = build_chunked(root, codec=Codec.ZSTD, layout=Layout.ARCHIVE)
    assert len(built.manifest.chunks) >= 4
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    finder = install(str(target))
    yield str(target), root
    finder.uninstall()
    for name in [m for m in sys.modules if m.split(".")[0] == "spread"]:
        del sys.modules[name]


def test_an_archive_keeps_its_chunks_compressed_and_decodes_only_what_is_read(multi_chunk: tuple[str, Path]) -> None:
    archive, root = multi_chunk
    raw_size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    assert os.path.getsize(os.path.join(archive, ARCHIVE_FILE)) < raw_size / 4
    finder = next(f for f in sys.meta_path if getattr(f, "code_dir", None) == archive)
    assert importlib.import_module("spread.m07").LAST == 7
    assert 1 <= finder.stream.decoded <= CHUNKS_KEPT
    for number in range(40):  # every chunk in turn: never more than CHUNKS_KEPT decoded at once
        assert number == importlib.import_module(f"spread.m{number:02d}").LAST
        assert finder.stream.decoded <= CHUNKS_KEPT
    assert pkgutil.get_data("spread", "zz_big.dat") == (root / "spread" / "zz_big.dat").read_bytes()  # spans chunks
    finder.stream.forget()  # once the handler is imported: nothing decoded is kept, a later read decodes again
    assert finder.stream.decoded == 0
    assert finder.read("spread/m03.py").endswith(b"LAST = 3\n")


def test_a_corrupted_chunk_in_the_node_cache_fails_the_read_and_is_never_imported(
    multi_chunk: tuple[str, Path],
) -> None:
    archive, _ = multi_chunk
    path = os.path.join(archive, ARCHIVE_FILE)
    os.chmod(path, 0o644)
    with open(path, "r+b") as file:  # a frame's body, past its header, overwritten
        file.seek(200)
        file.write(b"\xff" * 64)
    finder = install(archive)
    with pytest.raises(InvalidInput, match="damaged in the node cache"):
        finder.read("spread/m00.py")
    finder.uninstall()


def test_a_damaged_chunk_is_fetched_again_and_repaired_when_the_runtime_can(
    multi_chunk: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, root = multi_chunk
    path = os.path.join(archive, ARCHIVE_FILE)
    os.chmod(path, 0o644)
    with open(path, "r+b") as file:
        file.seek(200)
        file.write(b"\xff" * 64)
    os.chmod(path, 0o444)
    built = build_chunked(root, codec=Codec.ZSTD, layout=Layout.ARCHIVE)
    source = FakeChunkSource(built.manifest, built.chunks)
    asked: list[str] = []

    def refetch(ref: ChunkRef) -> bytes:
        asked.append(ref.digest)
        return bytes(source.chunk(ref))

    for _ in range(2):
        finder = install(archive, refetch=refetch)
        try:
            assert finder.read("spread/m00.py") == (root / "spread" / "m00.py").read_bytes()
            # the damaged chunk only, and only once: the copy fetched again repaired the node cache
            assert asked == [built.manifest.chunks[0].digest]
        finally:
            finder.uninstall()
    assert os.stat(path).st_mode & 0o777 == 0o444, "read-only again"
    assert "fetched it again and repaired the node cache" in capsys.readouterr().err


def test_an_archive_written_before_chunks_were_kept_compressed_still_imports(tmp_path: Path) -> None:
    root = tmp_path / "fn"
    root.mkdir()
    (root / "legacy_mod.py").write_text("VALUE = 'legacy'\n")
    (root / "notes.txt").write_text("kept\n")
    built = build_chunked(root, codec=Codec.LZ4, layout=Layout.ARCHIVE)
    target = tmp_path / "cache" / built.manifest.digest
    target.mkdir(parents=True)
    files = {entry.path: (root / entry.path).read_bytes() for entry in built.manifest.files}
    (target / LEGACY_FILE).write_bytes(b"".join(files[entry.path] for entry in built.manifest.files))
    ranges, modules, _, _ = build_index(built.manifest)
    (target / ARCHIVE_INDEX).write_bytes(marshal.dumps((ranges, modules)))
    finder = install(str(target))
    try:
        assert importlib.import_module("legacy_mod").VALUE == "legacy"
        assert finder.read("notes.txt") == b"kept\n"
    finally:
        finder.uninstall()
        sys.modules.pop("legacy_mod", None)
