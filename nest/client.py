"""The HTTP client the CLI uses to talk to a running Nest (`NEST_URL`, default `http://127.0.0.1:8080`).

httpx is fine here: this is the control plane, not the request path. Every failure becomes a `ClientError` with
one line a person can act on; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """A request to Nest failed; the message is the one line to show."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NestClient:
    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, transport=transport, timeout=httpx.Timeout(60, connect=5))

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = 2 if method in {"GET", "HEAD"} else 1  # a read is safe to send again on a dropped connection
        for attempt in range(1, attempts + 1):
            try:
                return self._http.request(method, path, **kwargs)
            except httpx.ConnectError:
                raise ClientError(
                    f"cannot reach Nest at {self.base_url} (is 'nest up' running? set NEST_URL)"
                ) from None
            except httpx.TimeoutException:
                raise ClientError(f"Nest at {self.base_url} did not answer in time") from None
            except httpx.RemoteProtocolError as exc:
                if attempt == attempts:
                    raise ClientError(f"Nest at {self.base_url} closed the connection: {exc}") from None
            except httpx.TransportError as exc:
                raise ClientError(f"talking to Nest at {self.base_url} failed: {exc}") from None
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        raise_for_error(response)
        return response.json()

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A JSON object answer (the API's usual shape)."""
        result: dict[str, Any] = self._json(method, path, **kwargs)
        return result

    def list_functions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/api/v1/functions")["functions"]
        return result

    def describe(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/api/v1/functions/{name}")

    def delete(self, name: str) -> dict[str, Any]:
        return self._object("DELETE", f"/api/v1/functions/{name}")

    def deploy(self, name: str, archive: bytes | Iterable[bytes], *, size: int | None = None) -> dict[str, Any]:
        headers = {"content-type": "application/gzip"}
        if size is not None:
            headers["content-length"] = str(size)
        return self._object("PUT", f"/api/v1/functions/{name}", content=archive, headers=headers)

    def missing_chunks(self, digests: list[str]) -> list[str] | None:
        """Which of these chunks the code store lacks; None from a Nest without the incremental upload API (an
        older one: send the whole bundle with `deploy` instead)."""
        response = self._request("POST", "/api/v1/uploads/missing", json={"chunks": digests})
        if response.status_code in {404, 405}:
            return None
        raise_for_error(response)
        missing: list[str] = response.json()["missing"]
        return missing

    def put_chunk(self, digest: str, data: bytes) -> dict[str, Any]:
        """Upload one compressed chunk (the store checks its sha256 against `digest`)."""
        headers = {"content-type": "application/octet-stream"}
        return self._object("PUT", f"/api/v1/uploads/chunks/{digest}", content=data, headers=headers)

    def invoke(
        self,
        name: str,
        *,
        method: str = "POST",
        path: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        suffix = path if not path or path.startswith("/") else f"/{path}"
        return self._request(method, f"/function/{name}{suffix}", content=body, headers=headers or {})

    def invoke_async(
        self,
        name: str,
        *,
        method: str = "POST",
        path: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Submit an async invocation; the answer holds `call_id` once the task is durably stored."""
        suffix = path if not path or path.startswith("/") else f"/{path}"
        return self._object(method, f"/async-function/{name}{suffix}", content=body, headers=headers)

    def invocation(self, call_id: str) -> dict[str, Any]:
        return self._object("GET", f"/api/v1/invocations/{call_id}")

    def invocations(self, *, function: str | None = None, status: str | None = None, limit: int = 50) -> list[Any]:
        params = (
            {"limit": str(limit)}
            | ({"function": function} if function else {})
            | ({"status": status} if status else {})
        )
        result: list[Any] = self._json("GET", "/api/v1/invocations", params=params)["invocations"]
        return result

    def cancel_invocation(self, call_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/api/v1/invocations/{call_id}")

    def redrive(self, call_id: str) -> dict[str, Any]:
        return self._object("POST", f"/api/v1/invocations/{call_id}/redrive")

    def async_control(self, name: str, action: str) -> dict[str, Any]:
        """`pause`, `resume` (POST) or `tasks` (DELETE: cancel every waiting task)."""
        method = "DELETE" if action == "tasks" else "POST"
        return self._object(method, f"/api/v1/functions/{name}/async/{action}")

    def purge_dead(self, function: str | None) -> dict[str, Any]:
        return self._object("DELETE", "/api/v1/dlq", params={"function": function} if function else {})

    def metrics(self) -> str:
        """The Prometheus text of `/metrics` (what `nest pools` reads)."""
        response = self._request("GET", "/metrics")
        raise_for_error(response)
        return response.text

    def logs(self, name: str, *, tail: int, follow: bool) -> Iterator[dict[str, Any]]:
        params = {"tail": str(tail), "follow": "true" if follow else "false"}
        timeout = httpx.Timeout(60, connect=5, read=None if follow else 60)
        try:
            with self._http.stream("GET", f"/api/v1/functions/{name}/logs", params=params, timeout=timeout) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    raise_for_error(stream)
                for line in stream.iter_lines():
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except ValueError:
                            yield {"message": line, "stream": "raw"}
        except httpx.ConnectError:
            raise ClientError(f"cannot reach Nest at {self.base_url} (is 'nest up' running? set NEST_URL)") from None


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error answer into a `ClientError` carrying the platform's `reason`."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        reason = body.get("reason") or body.get("error") or response.text
    except ValueError:
        body, reason = None, response.text.strip() or response.reason_phrase
    problems = body.get("problems") if isinstance(body, dict) else None
    if problems and len(problems) > 1:
        reason = "; ".join(f"{field}: {message}" if field else message for field, message in problems)
    raise ClientError(f"{reason} ({response.status_code})", status=response.status_code, body=body)
