"""Every error path a user can hit, each with its status and JSON body."""

from __future__ import annotations

import io
import socket
import tarfile
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.integration.conftest import Platform


def tar_gz(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def test_a_function_that_raises_is_a_500_without_a_stack_trace(platform: Platform) -> None:
    platform.deploy("raiser", "def handle(request):\n    raise ValueError('bad input')\n")
    platform.deploy("raiser-debug", "def handle(request):\n    raise ValueError('bad input')\n", "debug: true\n")
    with platform.http() as http:
        response = http.get("/function/raiser")
        debug = http.get("/function/raiser-debug")
    assert response.status_code == 500
    body = response.json()
    assert (body["error"], body["type"], body["reason"]) == ("function_error", "ValueError", "bad input")
    assert body["invocation_id"] == response.headers["x-nest-invocation-id"]
    assert "traceback" not in body
    assert "Traceback" in debug.json()["traceback"]


def test_a_slow_function_times_out_with_a_504(platform: Platform) -> None:
    platform.deploy(
        "sleeper",
        "import asyncio\n\nasync def handle(request):\n    await asyncio.sleep(5)\n",
        "timeout: 300ms\n",
    )
    with platform.http() as http:
        response = http.get("/function/sleeper")
    assert response.status_code == 504
    assert response.json()["error"] == "timeout"


def test_a_sync_handler_that_cannot_be_interrupted_is_recycled(platform: Platform) -> None:
    platform.deploy(
        "spinner",
        "import time\n\ndef handle(request):\n    time.sleep(float(request.query.get('s', '0')))\n    return 'done'\n",
        "timeout: 300ms\n",
    )
    with platform.http() as http:
        assert http.get("/function/spinner", params={"s": "2"}).status_code == 504
        # the instance exits and is replaced; the next request is served by a fresh one
        assert http.get("/function/spinner").text == "done"


def test_init_failures_are_reported_to_the_caller_and_in_describe(platform: Platform) -> None:
    platform.deploy("broken", "import not_a_module\n\ndef handle(request):\n    return 1\n")
    with platform.http() as http:
        response = http.get("/function/broken")
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "init_failed"
    assert "not_a_module" in body["reason"]
    error = platform.describe("broken")["last_init_error"]
    assert isinstance(error, dict)
    assert error["error_type"] == "ModuleNotFoundError"

    platform.deploy("no-handler", "def something_else(request):\n    return 1\n")
    with platform.http() as http:
        missing = http.get("/function/no-handler")
    assert missing.status_code == 502
    assert "handle" in missing.json()["reason"]


def test_a_body_over_the_limit_is_refused_with_413(platform: Platform) -> None:
    platform.deploy("small", "def handle(request):\n    return len(request.body)\n", "max_body: 1KB\n")
    with platform.http() as http:
        assert http.post("/function/small", content=b"x" * 1001).status_code == 413
        assert http.post("/function/small", content=b"x" * 1000).status_code == 500  # int is not a valid return


def test_bad_names_manifests_and_packages_are_refused_at_deploy(platform: Platform) -> None:
    good_code = b"def handle(request):\n    return 1\n"
    cases = {
        "Bad_Name": (tar_gz({"nest.yaml": b"name: Bad_Name\n", "main.py": good_code}), 400, "DNS label"),
        "x" * 64: (tar_gz({"nest.yaml": b"name: x\n", "main.py": good_code}), 400, "63"),
        "mismatch": (tar_gz({"nest.yaml": b"name: other\n", "main.py": good_code}), 400, "deployed as"),
        "typo": (tar_gz({"nest.yaml": b"name: typo\ntimout: 3s\n"}), 400, "timout"),
        "escape": (tar_gz({"nest.yaml": b"name: escape\n", "../evil.py": b"x"}), 400, "evil"),
        "absolute": (tar_gz({"nest.yaml": b"name: absolute\n", "/etc/evil": b"x"}), 400, "evil"),
        "link": (tar_gz({"nest.yaml": b"name: link\n"}, symlinks={"passwd": "/etc/passwd"}), 400, "passwd"),
        "garbage": (b"not a tarball", 400, "gzip"),
    }
    with platform.http() as http:
        for name, (archive, status, needle) in cases.items():
            response = http.put(f"/api/v1/functions/{name}", content=archive)
            assert response.status_code == status, (name, response.text)
            assert needle in response.json()["reason"], (name, response.json())
        assert http.put("/api/v1/functions/a..b", content=b"x").status_code in {400, 404}
    result = platform.cli("deploy", str(platform.write_function("cli-bad", "", "memory: '512'\n")), check=False)
    assert result.returncode != 0
    assert "memory" in result.stderr


def test_a_client_that_disconnects_frees_its_slot(platform: Platform) -> None:
    platform.deploy(
        "one-at-a-time",
        "import asyncio\n\nasync def handle(request):\n    await asyncio.sleep(float(request.query.get('s', '0')))\n"
        "    return 'ok'\n",
        "concurrency: 1\nscaling: {max: 1}\ntimeout: 60s\n",
    )
    with platform.http() as http:
        assert http.get("/function/one-at-a-time").text == "ok"  # warm
    host, port = platform.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"GET /function/one-at-a-time?s=30 HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.3)
    started = time.monotonic()
    with platform.http() as http:
        assert http.get("/function/one-at-a-time", timeout=10).text == "ok"
    assert time.monotonic() - started < 10


def test_unknown_functions_and_routes_are_404_json(platform: Platform) -> None:
    with httpx.Client(base_url=platform.url) as http:
        response = http.get("/function/nope")
        assert response.status_code == 404
        assert response.json()["reason"] == "function 'nope' not found"
        assert http.get("/api/v1/functions/nope").status_code == 404
        assert http.delete("/api/v1/functions/nope").status_code == 404
