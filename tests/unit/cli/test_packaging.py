from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import PackagingError, build_package
from nest.cli.templates import HANDLERS, render
from nest.contracts.chunks import Codec, split_bundle
from nest.contracts.manifest import parse_manifest

if TYPE_CHECKING:
    from pathlib import Path


def names(package: bytes) -> list[str]:
    manifest, _, _ = split_bundle(package)
    return sorted([entry.path for entry in manifest.files] + [link.path for link in manifest.links])


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


def test_the_codec_comes_from_nest_yaml_unless_given(tmp_path: Path) -> None:
    root = make_function(tmp_path)
    assert split_bundle(build_package(root))[0].codec is Codec.ZSTD
    (root / "nest.yaml").write_text("name: hello\npackage: {codec: lz4}\n")
    assert split_bundle(build_package(root))[0].codec is Codec.LZ4
    assert split_bundle(build_package(root, codec=Codec.NONE))[0].codec is Codec.NONE


def test_a_symlink_inside_the_directory_is_kept_relative(tmp_path: Path) -> None:
    root = make_function(tmp_path)
    (root / "alias.py").symlink_to(root / "lib" / "util.py")
    links = split_bundle(build_package(root))[0].links
    assert [(link.path, link.target) for link in links] == [("alias.py", "lib/util.py")]


@pytest.mark.parametrize("style", sorted(HANDLERS))
def test_every_init_template_is_a_valid_manifest(style: str) -> None:
    files = render("hello", style)
    manifest = parse_manifest(files["nest.yaml"])
    assert manifest.handler_style.value == style
    compile(files["main.py"], "main.py", "exec")
