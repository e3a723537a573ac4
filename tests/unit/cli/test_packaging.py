from __future__ import annotations

import io
import os
import tarfile
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import PackagingError, build_package
from nest.cli.templates import HANDLERS, render
from nest.contracts.manifest import parse_manifest

if TYPE_CHECKING:
    from pathlib import Path


def names(package: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
        return archive.getnames()


def make_function(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nest.yaml").write_text("name: hello\n")
    (root / "main.py").write_text("def handle(request):\n    return 1\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def test_the_same_tree_gives_the_same_bytes(tmp_path: Path) -> None:
    root = make_function(tmp_path)
    first = build_package(root)
    os.utime(root / "main.py", (0, 12345))
    assert build_package(root) == first
    (root / "main.py").write_text("def handle(request):\n    return 2\n")
    assert build_package(root) != first


def test_clutter_and_nestignore_patterns_are_left_out(tmp_path: Path) -> None:
    root = make_function(tmp_path)
    (root / "secrets.env").write_text("KEY=1")
    (root / ".nestignore").write_text("# local only\n*.env\n")
    assert names(build_package(root)) == [".nestignore", "lib/util.py", "main.py", "nest.yaml"]


def test_a_symlink_leaving_the_directory_is_refused(tmp_path: Path) -> None:
    root = make_function(tmp_path / "fn")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "leak").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(PackagingError, match="outside the function directory"):
        build_package(root)


def test_a_package_over_the_cap_is_refused(tmp_path: Path) -> None:
    root = make_function(tmp_path)
    (root / "blob.bin").write_bytes(os.urandom(4096))
    with pytest.raises(PackagingError, match="larger than"):
        build_package(root, max_bytes=1024)


@pytest.mark.parametrize("style", sorted(HANDLERS))
def test_every_init_template_is_a_valid_manifest(style: str) -> None:
    files = render("hello", style)
    manifest = parse_manifest(files["nest.yaml"])
    assert manifest.handler_style.value == style
    compile(files["main.py"], "main.py", "exec")
