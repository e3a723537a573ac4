"""The README's path, as a new user takes it: init, deploy, curl, invoke, ls, describe, logs, delete."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.integration.conftest import Platform


def test_init_deploy_invoke_list_describe_logs_delete(platform: Platform) -> None:
    platform.cli("init", "hello", "--dir", str(platform.work))
    deployed = platform.cli("deploy", str(platform.work / "hello")).stdout
    assert "hello" in deployed
    assert "/function/hello" in deployed

    before = platform.describe("hello")
    assert before["instances"] == []  # nothing runs until the first request

    with platform.http() as http:
        response = http.post("/function/hello", content=b'{"name":"x"}')
    assert response.status_code == 200, response.text
    assert response.json() == {"hello": "x"}
    assert response.headers["x-nest-invocation-id"]

    invoked = platform.cli("invoke", "hello", "--data", '{"name":"cli"}')
    assert json.loads(invoked.stdout) == {"hello": "cli"}

    listed = json.loads(platform.cli("ls", "-o", "json").stdout)
    assert [f["name"] for f in listed["functions"]] == ["hello"]
    assert listed["functions"][0]["ready"] == 1

    described = json.loads(platform.cli("describe", "hello", "-o", "json").stdout)
    assert described["manifest"]["handler"] == "main:handle"
    assert "async" in described["manifest"], "the manifest's keys as nest.yaml spells them"
    assert "async_" not in described["manifest"]
    assert len(described["instances"]) == 1
    assert described["scaling"]["decisions"], "the scale from zero is explained"

    platform.cli("delete", "hello", "--yes")
    with platform.http() as http:
        assert http.post("/function/hello", content=b"{}").status_code == 404
    failed = platform.cli("describe", "hello", check=False)
    assert failed.returncode != 0
    assert "not found" in failed.stderr


def test_logs_carry_the_invocation_id(platform: Platform) -> None:
    platform.deploy(
        "printer",
        """
        def handle(request):
            print("printing", request.json()["n"])
            return "ok"
        """,
    )
    with platform.http() as http:
        response = http.post("/function/printer", content=b'{"n": 42}')
    invocation_id = response.headers["x-nest-invocation-id"]

    def logged() -> bool:
        lines = platform.cli("logs", "printer", "-o", "json").stdout.splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return any(r["message"] == "printing 42" and r["invocation_id"] == invocation_id for r in records)

    platform.wait_for(logged, what="the print to reach `nest logs` with its invocation id")


def test_redeploying_identical_code_is_a_no_op_and_changed_code_a_new_version(platform: Platform) -> None:
    code = "def handle(request):\n    return 'v1'\n"
    platform.deploy("versions", code)
    first = platform.describe("versions")["version"]
    again = platform.cli("deploy", str(platform.work / "versions")).stdout
    assert "unchanged" in again
    assert platform.describe("versions")["version"] == first

    platform.deploy("versions", "def handle(request):\n    return 'v2'\n")
    described = platform.describe("versions")
    assert described["version"] != first
    assert len(described["versions"]) == 2  # type: ignore[arg-type]
    with platform.http() as http:
        assert http.get("/function/versions").text == "v2"


def test_asgi_and_lambda_styles_are_served(platform: Platform) -> None:
    platform.deploy(
        "starlette-app",
        """
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def items(request):
            return JSONResponse({"item": request.path_params["id"], "q": request.query_params.get("q")})

        app = Starlette(routes=[Route("/items/{id}", items)])
        """,
        "handler: main:app\nhandler_style: asgi\n",
    )
    platform.deploy(
        "lambda-fn",
        """
        import json

        def handler(event, context):
            return {"statusCode": 201, "body": json.dumps({"path": event["rawPath"], "id": context.aws_request_id})}
        """,
        "handler: main:handler\nhandler_style: lambda\n",
    )
    with platform.http() as http:
        asgi = http.get("/function/starlette-app/items/7?q=z")
        assert (asgi.status_code, asgi.json()) == (200, {"item": "7", "q": "z"})
        lam = http.post("/function/lambda-fn/x/y", content=b"{}")
        assert lam.status_code == 201
        assert lam.json()["path"] == "/x/y"
        assert lam.json()["id"] == lam.headers["x-nest-invocation-id"]


def test_extra_http_paths_and_methods_route_to_the_function(platform: Platform) -> None:
    platform.deploy(
        "pathy",
        "def handle(request):\n    return {'path': request.path, 'method': request.method}\n",
        "http:\n  methods: [GET]\n  paths: [/hello, /pathy-api/*]\n",
    )
    with platform.http() as http:
        assert http.get("/hello").json() == {"path": "/hello", "method": "GET"}
        assert http.get("/pathy-api/a/b").json()["path"] == "/pathy-api/a/b"
        assert http.post("/function/pathy").status_code == 405
        assert http.get("/nowhere").status_code == 404


def test_the_control_api_serves_openapi_metrics_and_health(platform: Platform) -> None:
    with httpx.Client(base_url=platform.url) as http:
        spec = http.get("/api/v1/openapi.json").json()
        assert "/api/v1/functions/{name}" in spec["paths"]
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        assert "nest_gateway_requests" in http.get("/metrics").text


def test_logs_follow_streams_new_lines(platform: Platform) -> None:
    import select
    import subprocess
    import time

    from tests.integration.conftest import NEST

    platform.deploy("follower", "def handle(request):\n    print('line', request.query['n'])\n    return 'ok'\n")
    follower = subprocess.Popen(
        [NEST, "logs", "follower", "-f", "--url", platform.url], stdout=subprocess.PIPE, text=True
    )
    assert follower.stdout is not None
    try:
        seen = ""
        with platform.http() as http:
            for n in range(1, 30):  # keep invoking until the follower has caught up and printed one
                assert http.get("/function/follower", params={"n": str(n)}).text == "ok"
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    readable, _, _ = select.select([follower.stdout], [], [], 0.1)
                    if readable:
                        seen += follower.stdout.readline()
                if f"line {n}" in seen:
                    break
        assert "line" in seen, "no line reached `nest logs -f`"
        last = max(int(part.split("line ")[1].split()[0]) for part in seen.splitlines() if "line " in part)
        with platform.http() as http:
            http.get("/function/follower", params={"n": "999"})
        deadline = time.monotonic() + 10
        while "line 999" not in seen and time.monotonic() < deadline:
            readable, _, _ = select.select([follower.stdout], [], [], 0.2)
            if readable:
                seen += follower.stdout.readline()
        assert "line 999" in seen, f"a new line after line {last} was not streamed"
    finally:
        follower.terminate()
        follower.communicate(timeout=10)
