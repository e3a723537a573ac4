"""The handler SDK: what a function's code imports (`from nest import Request, Response`).

Standard library only, because every instance imports it before the user's code. The runtime builds the
`Request`, calls the handler, and turns what it returns into an HTTP response:

```python
from nest import Response

def handle(request):
    name = request.json().get("name", "world")
    return {"hello": name}                      # -> 200 application/json

async def teapot(request):
    return Response("short and stout", status=418, headers={"x-kind": "teapot"})
```

Return values: `dict`/`list` -> JSON, `str` -> text/plain, `bytes` -> application/octet-stream, `None` -> 204,
`Response` -> as given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only request headers. Repeated headers are joined with `, `."""

    __slots__ = ("_items",)

    def __init__(self, raw: list[tuple[bytes, bytes]] | None = None) -> None:
        items: dict[str, str] = {}
        for key, value in raw or ():
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            items[name] = f"{items[name]}, {text}" if name in items else text
        self._items = items

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Any:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(slots=True)
class Request:
    """One invocation as the handler sees it.

    `path` is the part after `/function/<name>` (always starting with `/`), `query` maps each parameter to its
    last value (`query_list` keeps them all), `body` is the raw bytes.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    invocation_id: str = ""
    function: str = ""
    query_list: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON; an empty body is `{}`. Malformed JSON raises `ValueError`."""
        if not self.body.strip():
            return {}
        return json.loads(self.body)


@dataclass(slots=True)
class Response:
    """An explicit response: `Response(body, status=201, headers={"location": "/x"})`.

    `body` may be `bytes`, `str` (UTF-8 text/plain unless a content-type is given), a `dict`/`list` (JSON) or
    `None` (empty).
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class NonRetryable(Exception):
    """Raise from a handler to say that retrying this input cannot succeed (async invocations dead-letter it)."""


class Throttled(Exception):
    """Raise from a handler when a downstream is overloaded; async invocations back off without spending an attempt."""

    def __init__(self, message: str = "throttled", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
