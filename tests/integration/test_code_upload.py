"""Incremental package uploads and node-cache eviction through a real `nest up`, its CLI and HTTP API."""

from __future__ import annotations

import base64
import random
import re
from typing import TYPE_CHECKING

import pytest

from nest.cli.packaging import build_chunked
from nest.contracts.chunks import Codec, pack_bundle
from tests.integration.conftest import start_platform, stop_platform
from tests.integration.test_code_packages import CODE, big_function, stored_chunks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

UPLOADED = re.compile(r"uploaded (\d+) of (\d+) chunks \((\d+) already stored\): (\d+) of (\d+) B")


def uploaded(output: str) -> tuple[int, int, int, int, int]:
    match = UPLOADED.search(output)
    assert match, output
    sent, total, skipped, sent_bytes, package_bytes = map(int, match.groups())
    return sent, total, skipped, sent_bytes, package_bytes


def test_a_redeploy_uploads_only_the_chunks_the_store_lacks(platform: Platform) -> None:
    directory = big_function(platform.work / "up-big", "up-big")
    first = platform.cli("deploy", str(directory)).stdout
    sent, total, skipped, first_bytes, package_bytes = uploaded(first)
    assert (sent, skipped) == (total, 0)
    assert total >= 3
    chunk_bytes = int(re.findall(r"(\d+) B stored", first)[0])
    assert chunk_bytes < first_bytes < package_bytes, "every chunk, the query and the manifest (compressed)"
    before = stored_chunks(platform)
    (directory / "lib" / "helper.py").write_text("VALUE = 'second'\n")
    second = platform.cli("deploy", str(directory)).stdout
    sent, total_again, skipped, sent_bytes, package_bytes = uploaded(second)
    assert (sent, total_again, skipped) == (1, total, total - 1), second
    assert sent_bytes * 3 < package_bytes, second
    assert "(new)" in second
    assert stored_chunks(platform) == before + 1
    with platform.http() as http:
        assert http.post("/function/up-big").json() == {"value": "second"}
    print(f"\nredeploy of a {package_bytes} B package with one file changed: sent {sent_bytes} B")
    unchanged = platform.cli("deploy", str(directory)).stdout
    assert uploaded(unchanged)[:3] == (0, total, total)
    assert "(unchanged)" in unchanged


def test_the_missing_query_validates_and_bounds_its_input(platform: Platform) -> None:
    with platform.http() as http:
        bad = http.post("/api/v1/uploads/missing", json={"chunks": ["a" * 64, "../../state.db"]})
        assert bad.status_code == 400
        assert bad.json()["problems"][0][0] == "chunks[1]"
        many = http.post("/api/v1/uploads/missing", json={"chunks": ["a" * 64] * 4097})
        assert many.status_code == 400
        assert many.json()["problems"] == [["chunks", "4097 digests, more than 4096 in one query"]]
        huge = http.post("/api/v1/uploads/missing", content=b" " * (600 * 1024))
        assert huge.status_code == 413
        assert http.post("/api/v1/uploads/missing", content=b"{").json()["problems"][0][0] == "body"
        absent = http.post("/api/v1/uploads/missing", json={"chunks": ["b" * 64]})
        assert absent.json() == {"missing": ["b" * 64], "stored": 0}
        wrong = http.put(f"/api/v1/uploads/chunks/{'c' * 64}", content=b"not those bytes")
        assert wrong.status_code == 400
        assert "sha256" in wrong.json()["reason"]
        assert http.put("/api/v1/uploads/chunks/ABC", content=b"x").json()["problems"][0][0] == "digest"


def test_a_manifest_whose_chunks_were_not_sent_is_refused_then_taken(platform: Platform) -> None:
    directory = big_function(platform.work / "up-partial", "up-partial")
    (directory / "lib" / "helper.py").write_text("VALUE = 'partial'\n")
    built = build_chunked(directory, codec=Codec.ZSTD)
    digests = [ref.digest for ref in built.manifest.chunks]
    with platform.http() as http:
        missing = http.post("/api/v1/uploads/missing", json={"chunks": digests}).json()["missing"]
        assert missing
        manifest_alone = pack_bundle(built.manifest.to_bytes(), [])
        refused = http.put("/api/v1/functions/up-partial", content=manifest_alone)
        assert refused.status_code == 409
        assert refused.json()["error"] == "missing_chunks"
        assert {message.split()[0] for _, message in refused.json()["problems"]} == set(missing)
        assert http.get(f"/api/v1/code/manifests/{built.manifest.digest}").status_code == 404
        for digest in missing:
            chunk = built.chunks[digests.index(digest)]
            assert http.put(f"/api/v1/uploads/chunks/{digest}", content=chunk).status_code == 201
        taken = http.put("/api/v1/functions/up-partial", content=manifest_alone)
        assert taken.status_code == 201, taken.text
        assert http.post("/function/up-partial").json() == {"value": "partial"}


def cached(platform: Platform) -> set[str]:
    """Packages in the node cache, and their bytecode sidecars (`<digest>.pyc`) as `<digest>+pyc`."""
    return {
        path.name.replace(".pyc", "+pyc")
        for path in (platform.data_dir / "cache").glob("??/*")
        if not path.name.startswith(".")
    }


def test_the_node_cache_evicts_old_versions_past_its_budget(tmp_path: Path) -> None:
    running = start_platform(tmp_path / "data", tmp_path / "work", extra=("--code-cache-size", "3KB"))
    try:
        (running.work / "evict" / "lib").mkdir(parents=True)
        # each version ~2.2 KB on disk (random text does not compress): one fits the 3 KB budget, two do not
        padding = "# " + base64.b64encode(random.Random(7).randbytes(1500)).decode() + "\n"
        directory = running.write_function("evict", CODE, files={"lib/helper.py": f"VALUE = 1\n{padding}"})
        running.cli("deploy", str(directory))
        with running.http() as http:
            assert http.post("/function/evict").json() == {"value": 1}
        described = running.describe("evict")
        first, first_version = described["versions"][0]["code_digest"], described["version"]  # type: ignore[index]
        # the sidecar is written by the instance's background writer, just after its imports
        running.wait_for(lambda: cached(running) == {first, f"{first}+pyc"}, what="the package and its sidecar")
        (directory / "lib" / "helper.py").write_text(f"VALUE = 2\n{padding}")
        running.cli("deploy", str(directory))
        with running.http() as http:
            assert http.post("/function/evict").json() == {"value": 2}
        second = next(v["code_digest"] for v in running.describe("evict")["versions"] if v["code_digest"] != first)  # type: ignore[attr-defined]

        def first_version_stopped() -> bool:
            instances = running.describe("evict")["instances"]
            assert isinstance(instances, list)
            return all(instance["version"] != first_version for instance in instances)

        running.wait_for(first_version_stopped, what="the old version's instance to stop")
        running.cli("deploy", str(directory))  # unchanged: still a deploy, so the janitor sweeps
        running.wait_for(
            lambda: cached(running) == {second, f"{second}+pyc"}, what="the old version's package and sidecar evicted"
        )
        log = next(tmp_path.glob("nest-up-*.log")).read_text()
        assert "code cache: evicted 1 packages" in log
        assert not list((running.data_dir / "cache").glob("??/.trash-*")), "trash deleted"
        with running.http() as http:
            assert http.post("/function/evict").json() == {"value": 2}
    finally:
        assert stop_platform(running) == []
