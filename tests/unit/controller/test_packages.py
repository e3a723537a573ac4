from __future__ import annotations

import gzip
import io
import tarfile
from typing import TYPE_CHECKING

import pytest

from controller.codestore.packages import code_dir_for, remove_unreferenced, unpack_package
from nest.contracts.errors import InvalidInput

if TYPE_CHECKING:
    from pathlib import Path

MANIFEST = b"name: hello\n"


def tar_gz(*members: tuple[str, bytes | None, str]) -> bytes:
    """Members as (name, data, kind) with kind one of file, dir, symlink:<target>, hardlink:<target>, fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind.split(":", 1)[1]
            elif kind.startswith("hardlink:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind.split(":", 1)[1]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_a_package_unpacks_read_only_under_its_digest(tmp_path: Path) -> None:
    archive = tar_gz(("nest.yaml", MANIFEST, "file"), ("pkg/", None, "dir"), ("pkg/mod.py", b"x = 1\n", "file"))
    package = unpack_package(archive, target_root=tmp_path)
    assert package.code_dir == code_dir_for(tmp_path, package.digest)
    assert (package.code_dir / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert package.manifest_text == MANIFEST
    assert package.files == 3
    assert not (package.code_dir / "pkg" / "mod.py").stat().st_mode & 0o222


def test_the_digest_ignores_archive_order_and_the_tree_is_reused(tmp_path: Path) -> None:
    first = unpack_package(tar_gz(("nest.yaml", MANIFEST, "file"), ("a.py", b"a", "file")), target_root=tmp_path)
    second = unpack_package(tar_gz(("a.py", b"a", "file"), ("nest.yaml", MANIFEST, "file")), target_root=tmp_path)
    changed = unpack_package(tar_gz(("nest.yaml", MANIFEST, "file"), ("a.py", b"b", "file")), target_root=tmp_path)
    assert first.digest == second.digest != changed.digest
    assert remove_unreferenced(tmp_path, keep={first.digest}) == 1
    assert first.code_dir.exists()
    assert not changed.code_dir.exists()


@pytest.mark.parametrize(
    ("member", "needle"),
    [
        pytest.param(("../evil.py", b"x", "file"), "escapes", id="dot-dot"),
        pytest.param(("a/../../evil.py", b"x", "file"), "escapes", id="nested-dot-dot"),
        pytest.param(("/etc/evil", b"x", "file"), "absolute", id="absolute"),
        pytest.param(("link", None, "symlink:/etc/passwd"), "outside", id="symlink-absolute"),
        pytest.param(("link", None, "symlink:../../x"), "outside", id="symlink-relative-out"),
        pytest.param(("hard", None, "hardlink:nest.yaml"), "hard link", id="hard-link"),
        pytest.param(("pipe", None, "fifo"), "device or fifo", id="fifo"),
        pytest.param(("nest.yaml", b"again", "file"), "twice", id="duplicate"),
    ],
)
def test_dangerous_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: tuple[str, bytes | None, str], needle: str
) -> None:
    archive = tar_gz(("nest.yaml", MANIFEST, "file"), member)
    with pytest.raises(InvalidInput, match=needle):
        unpack_package(archive, target_root=tmp_path / "code")
    assert not list((tmp_path / "code").glob("??")), "nothing was kept"


def test_symlinks_inside_the_tree_are_fine(tmp_path: Path) -> None:
    archive = tar_gz(("nest.yaml", MANIFEST, "file"), ("lib.py", b"x", "file"), ("alias.py", None, "symlink:lib.py"))
    package = unpack_package(archive, target_root=tmp_path)
    assert (package.code_dir / "alias.py").read_bytes() == b"x"


def test_limits_on_size_count_and_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="more than 100 bytes"):
        unpack_package(
            tar_gz(("nest.yaml", MANIFEST, "file"), ("big", b"x" * 200, "file")),
            target_root=tmp_path,
            max_unpacked_bytes=100,
        )
    with pytest.raises(InvalidInput, match="more than 2 files"):
        unpack_package(
            tar_gz(("nest.yaml", MANIFEST, "file"), ("a", b"", "file"), ("b", b"", "file")),
            target_root=tmp_path,
            max_files=2,
        )
    with pytest.raises(InvalidInput, match=r"no nest\.yaml"):
        unpack_package(tar_gz(("main.py", b"x", "file")), target_root=tmp_path)
    with pytest.raises(InvalidInput, match="not a gzip tar"):
        unpack_package(b"not an archive", target_root=tmp_path)
    bomb = gzip.compress(b"\0" * (10 * 1024**2))
    with pytest.raises(InvalidInput):
        unpack_package(bomb, target_root=tmp_path, max_unpacked_bytes=1024**2)
