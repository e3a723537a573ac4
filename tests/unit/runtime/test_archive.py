from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import Codec, Layout
from runtime.archive import ARCHIVE_FILE, ARCHIVE_INDEX, install, is_archive
from runtime.unpack import cache_dir_for, ensure_package
from tests.fakes.chunk_source import FakeChunkSource

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NAMES = ("archived_main", "archived_pkg", "archived_ns")


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
    built = build_chunked(root, codec=Codec.LZ4, layout=Layout.ARCHIVE)
    target = cache_dir_for(tmp_path / "cache", built.manifest.digest)
    ensure_package(target, built.manifest.digest, FakeChunkSource(built.manifest, built.chunks))
    finder = install(str(target))
    yield str(target)
    sys.meta_path.remove(finder)
    for name in [m for m in sys.modules if m.split(".")[0] in NAMES]:
        del sys.modules[name]


def test_an_archive_is_one_file_and_modules_import_from_it(archive: str) -> None:
    assert is_archive(archive)
    assert sorted(os.listdir(archive)) == sorted([ARCHIVE_FILE, ARCHIVE_INDEX])
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


def test_unknown_modules_fall_through_to_the_other_finders(archive: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("archived_pkg.nothing_here")
    assert importlib.import_module("json").__name__ == "json"
