"""Chunked code packages through a real `nest up`: deploy with each codec, fetch and unpack on the first start,
the node cache on later ones, deduplicated chunks on a redeploy, refusals and range requests on the code store."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import random
import shutil
import tarfile
import time
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import Codec, FileEntry, Layout, compress, pack_bundle, store_path
from nest.contracts.manifest import Package
from runtime.archive import install
from runtime.fetch import open_source
from runtime.unpack import ensure_package

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

CODE = """
from lib.helper import VALUE

def handle(request):
    return {"value": VALUE}
"""


def with_lib(platform: Platform, name: str) -> None:
    (platform.work / name / "lib").mkdir(parents=True, exist_ok=True)


def stored_chunks(platform: Platform) -> int:
    return len(list((platform.data_dir / "chunks" / "objects").glob("??/*")))


def cold_phases(platform: Platform, name: str) -> dict[str, float]:
    starts = platform.describe(name)["cold_starts"]
    assert isinstance(starts, list)
    assert starts
    phases: dict[str, float] = starts[0]["phases_ms"]
    return phases


@pytest.mark.parametrize(("codec", "layout"), [("zstd", "tree"), ("lz4", "tree"), ("zstd", "archive")])
def test_a_package_is_fetched_and_unpacked_on_the_first_start(platform: Platform, codec: str, layout: str) -> None:
    name = f"pkg-{codec}-{layout}"
    with_lib(platform, name)
    settings = f"package: {{codec: {codec}, layout: {layout}}}\n"
    output = platform.deploy(name, CODE, settings, files={"lib/helper.py": f"VALUE = {codec!r}\n"})
    assert "package: 1 chunks, 1 new" in output
    with platform.http() as http:
        first = http.post(f"/function/{name}")
        assert first.status_code == 200, first.text
        assert first.json() == {"value": codec}
        timing = first.headers["server-timing"]
        assert "fetch;dur=" in timing, timing
        assert "unpack;dur=" in timing, timing
        phases = cold_phases(platform, name)
        assert {"fetch", "unpack", "init"} <= set(phases)
        digest = platform.describe(name)["versions"][0]["code_digest"]  # type: ignore[index]
    cached = platform.data_dir / "cache" / digest[:2] / digest
    assert (cached / ("chunks.bin" if layout == "archive" else "lib/helper.py")).is_file()


FILES_BESIDE = """
import importlib.machinery
import os
import pkgutil

import lib
from lib import _bisect as fast

HERE = os.path.dirname(__file__)


def handle(request):
    with open(os.path.join(HERE, "lib", "greeting.txt")) as file:
        greeting = file.read().strip()
    return {
        "greeting": greeting,
        "extension": fast.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)),
        "main_on_disk": os.path.exists(__file__),
        "listed": sorted(module.name for module in pkgutil.iter_modules(lib.__path__)),
    }
"""


def test_the_default_layout_serves_data_files_and_c_extensions_as_files(platform: Platform) -> None:
    """`nest deploy` with no `package:`: an archive, whose non-source files are files (open() beside __file__ and
    a C extension, chosen over a pure-Python fallback of the same name, as a tree would)."""
    name = "pkg-files"
    with_lib(platform, name)
    shutil.copy(bisect_extension(), platform.work / name / "lib" / os.path.basename(bisect_extension()))
    files = {
        "lib/__init__.py": "",
        "lib/helper.py": "VALUE = 1\n",
        "lib/greeting.txt": "hello from a data file\n",
        "lib/_bisect.py": "PURE = 1\n",
    }
    platform.deploy(name, FILES_BESIDE, files=files)
    with platform.http() as http:
        answer = http.post(f"/function/{name}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "greeting": "hello from a data file",
        "extension": True,
        "main_on_disk": False,
        "listed": ["_bisect", "helper"],  # plugin discovery sees the archive's modules and the extension
    }
    digest = platform.describe(name)["versions"][0]["code_digest"]  # type: ignore[index]
    cached = platform.data_dir / "cache" / digest[:2] / digest
    assert (cached / "chunks.bin").is_file()
    assert (cached / "lib" / "greeting.txt").is_file()
    assert not (cached / "main.py").exists()


def bisect_extension() -> str:
    path = getattr(importlib.import_module("_bisect"), "__file__", None)
    if not path:
        pytest.skip("this Python builds _bisect in (no C extension file to ship in a package)")
    return str(path)


def test_a_second_start_of_a_version_finds_the_node_cache(platform: Platform) -> None:
    name = "pkg-cache"
    with_lib(platform, name)
    directory = platform.write_function(name, CODE, "pool: none\n", files={"lib/helper.py": "VALUE = 1\n"})
    platform.cli("deploy", str(directory))
    with platform.http() as http:
        assert http.post(f"/function/{name}").status_code == 200
    assert "fetch" in cold_phases(platform, name)
    # Deleted and deployed again: the same package digest, whose first start now is a node-cache hit.
    platform.cli("delete", name, "--yes")
    platform.cli("deploy", str(directory))
    with platform.http() as http:
        again = http.post(f"/function/{name}")
    assert again.status_code == 200
    assert "fetch" not in again.headers["server-timing"]
    assert "unpack" not in again.headers["server-timing"]


@pytest.mark.parametrize("layout", ["tree", "archive"])
def test_a_later_cold_start_loads_the_bytecode_the_first_one_cached(platform: Platform, layout: str) -> None:
    name = f"pkg-bytecode-{layout}"
    with_lib(platform, name)
    files = {"lib/__init__.py": "", "lib/helper.py": "from lib.other import OTHER\nVALUE = OTHER + 1\n"}
    files["lib/other.py"] = "OTHER = 41\n"
    settings = f"pool: none\npackage: {{layout: {layout}}}\n"
    directory = platform.write_function(name, CODE, settings, files=files)
    platform.cli("deploy", str(directory))
    with platform.http() as http:
        assert http.post(f"/function/{name}").json() == {"value": 42}
        digest = platform.describe(name)["versions"][0]["code_digest"]  # type: ignore[index]
    sidecar = platform.data_dir / "cache" / digest[:2] / f"{digest}.pyc"
    expected = {"main.pyc", "lib%2F__init__.pyc", "lib%2Fhelper.pyc", "lib%2Fother.pyc"}
    for _ in range(100):  # the instance's writer thread may still be at it
        if sidecar.is_dir() and {path.name for path in sidecar.iterdir()} == expected:
            break
        time.sleep(0.05)
    written = {path.name: path.stat().st_mtime_ns for path in sidecar.iterdir()}
    assert set(written) == expected
    # Deleted and deployed again: the same package, whose next cold start finds the pycs and rewrites none.
    platform.cli("delete", name, "--yes")
    platform.cli("deploy", str(directory))
    with platform.http() as http:
        again = http.post(f"/function/{name}")
    assert again.json() == {"value": 42}
    assert "init;dur=" in again.headers["server-timing"]
    assert {path.name: path.stat().st_mtime_ns for path in sidecar.iterdir()} == written


def big_function(root: Path, name: str) -> Path:
    rng = random.Random(4)
    (root / "lib").mkdir(parents=True, exist_ok=True)
    (root / "nest.yaml").write_text(f"name: {name}\n")
    (root / "main.py").write_text(CODE)
    (root / "lib" / "helper.py").write_text("VALUE = 'first'\n")
    for index in range(250):
        body = "\n".join(f"def f_{index}_{line}(x):\n    return x * {rng.randrange(10**6)}" for line in range(400))
        (root / "lib" / f"module_{index:03}.py").write_text(body + "\n")
    return root


def test_a_redeploy_with_one_file_changed_stores_only_the_changed_chunks(platform: Platform) -> None:
    directory = big_function(platform.work / "pkg-big", "pkg-big")
    first = platform.cli("deploy", str(directory)).stdout
    before = stored_chunks(platform)
    (directory / "lib" / "helper.py").write_text("VALUE = 'second'\n")
    second = platform.cli("deploy", str(directory)).stdout
    assert "1 new" in second, (first, second)
    assert stored_chunks(platform) == before + 1
    total = int(first.split("package: ")[1].split(" chunks")[0])
    assert total >= 3
    with platform.http() as http:
        assert http.post("/function/pkg-big").json() == {"value": "second"}


def test_a_package_with_a_path_escaping_the_tree_is_refused_naming_it(platform: Platform) -> None:
    raw = b"name: evil\nx = 1\n"
    chunk = compress(Codec.ZSTD, raw)
    entries = [
        FileEntry("nest.yaml", 0o644, 11, 0, 0, hashlib.sha256(raw[:11]).hexdigest()),
        FileEntry("../evil.py", 0o644, 6, 0, 11, hashlib.sha256(raw[11:]).hexdigest()),
    ]
    manifest = {
        "format": 1,
        "codec": "zstd",
        "chunks": [{"digest": hashlib.sha256(chunk).hexdigest(), "size": len(chunk), "raw_size": len(raw)}],
        "files": [
            {"path": e.path, "mode": e.mode, "size": e.size, "chunk": 0, "offset": e.offset, "digest": e.digest}
            for e in entries
        ],
        "links": [],
    }
    body = pack_bundle(json.dumps(manifest).encode(), [chunk])
    with platform.http() as http:
        response = http.put("/api/v1/functions/evil", content=body)
    assert response.status_code == 400
    assert "../evil.py: escapes the package directory" in response.json()["reason"]
    assert not (platform.data_dir / "chunks" / "objects" / manifest["chunks"][0]["digest"][:2]).exists()  # type: ignore[index]


def test_the_code_store_serves_manifests_and_chunk_ranges(platform: Platform) -> None:
    with_lib(platform, "pkg-range")
    directory = platform.write_function("pkg-range", CODE, files={"lib/helper.py": "VALUE = 3\n"})
    built = build_chunked(directory, codec=Codec.ZSTD, layout=Layout(Package().layout))  # as `nest deploy` builds it
    platform.cli("deploy", str(directory))
    chunk = built.manifest.chunks[0]
    with platform.http() as http:
        manifest = http.get(f"/api/v1/code/manifests/{built.manifest.digest}")
        assert hashlib.sha256(manifest.content).hexdigest() == built.manifest.digest
        part = http.get(f"/api/v1/code/chunks/{chunk.digest}", headers={"range": "bytes=0-9"})
        assert part.status_code == 206
        assert part.content == built.chunks[0][:10]
        assert http.get(f"/api/v1/code/chunks/{'0' * 64}").status_code == 404
        assert http.get("/api/v1/code/chunks/..%2F..%2Fstate.db").status_code == 404


def test_another_node_fetches_a_package_over_http(platform: Platform, tmp_path: Path) -> None:
    with_lib(platform, "pkg-remote")
    directory = platform.write_function("pkg-remote", CODE, files={"lib/helper.py": "VALUE = 'remote'\n"})
    platform.cli("deploy", str(directory))
    digest = platform.describe("pkg-remote")["versions"][0]["code_digest"]  # type: ignore[index]
    with open_source(f"{platform.url}/api/v1/code") as source:
        done = ensure_package(tmp_path / "node-cache" / digest, digest, source)
    assert not done.cached
    finder = install(str(done.code_dir))  # the default layout: the sources are read from the archive
    try:
        assert finder.read("lib/helper.py") == b"VALUE = 'remote'\n"
    finally:
        finder.uninstall()


def test_a_gzip_tar_from_an_older_client_is_still_deployed(platform: Platform) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (
            ("nest.yaml", b"name: pkg-legacy\n"),
            ("main.py", b'def handle(request):\n    return {"value": 7}\n'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with platform.http() as http:
        deployed = http.put("/api/v1/functions/pkg-legacy", content=buffer.getvalue())
        assert deployed.status_code == 201, deployed.text
        assert "package" not in deployed.json()
        answer = http.post("/function/pkg-legacy")
    assert answer.status_code == 200
    assert answer.json() == {"value": 7}
    assert "fetch" not in answer.headers["server-timing"]


def test_a_corrupted_stored_chunk_is_never_imported(platform: Platform) -> None:
    with_lib(platform, "pkg-corrupt")
    directory = platform.write_function("pkg-corrupt", CODE, files={"lib/helper.py": "VALUE = 'intact'\n"})
    built = build_chunked(directory, codec=Codec.ZSTD)
    platform.cli("deploy", str(directory))
    stored = platform.data_dir / "chunks" / store_path("chunks", built.manifest.chunks[0].digest)
    stored.chmod(0o644)
    stored.write_bytes(bytes(len(built.chunks[0])))
    with platform.http() as http:
        response = http.post("/function/pkg-corrupt")
    assert response.status_code == 502
    assert response.json()["error"] == "init_failed"
    failure = platform.describe("pkg-corrupt")["last_init_error"]
    assert isinstance(failure, dict)
    assert failure["error_type"] == "PackageError"
    assert "sha256 did not match" in failure["detail"]
