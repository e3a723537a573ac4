"""The AWS Lambda Invoke API, `POST /2015-03-31/functions/{name}/invocations`, so boto3's Lambda client works.

`X-Amz-Invocation-Type`:

- `RequestResponse` (default): run now, answer 200 with the function's result. A function that raised answers 200
  with `X-Amz-Function-Error: Unhandled` and `{"errorMessage", "errorType", "stackTrace"}` (as Lambda does); a
  `lambda`-style handler gets the payload itself as its event.
- `Event`: queue it (the async path: retries, dead letters, destinations) and answer 202 with `X-Amzn-RequestId`.
- `DryRun`: check the function exists and answer 204.

Errors carry `x-amzn-ErrorType` and `{"Type": "User", "message": ...}`, which botocore turns into its exceptions
(`ResourceNotFoundException`, `InvalidRequestContentException`, `RequestTooLargeException`,
`TooManyRequestsException`). A throttle (429) is only answered before the function started, since boto3 retries
it: a full activator buffer or no instance in time; never once the handler ran. Requests are not authenticated
(as the rest of the gateway); SigV4 headers are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nest.contracts.errors import InvalidInput, NestError, NotFound, PayloadTooLarge, TooManyRequests
from nest.contracts.manifest import NAME_PATTERN

if TYPE_CHECKING:
    from starlette.requests import Request

    from gateway.asyncq.api import AsyncApi, RouteCatalog
    from gateway.asyncq.invoking import Answer, ProxyInvoker

SYNC_PAYLOAD_MAX = 6 * 1024 * 1024
"""Lambda's synchronous payload limit; the function's own `max_body` applies too."""
DIRECT_HEADER = (b"x-nest-lambda-direct", b"1")
ERROR_TYPES: tuple[tuple[type[NestError], str, int], ...] = (
    (PayloadTooLarge, "RequestTooLargeException", 413),
    (InvalidInput, "InvalidRequestContentException", 400),
    (NotFound, "ResourceNotFoundException", 404),
    (TooManyRequests, "TooManyRequestsException", 429),
)


class LambdaInvokeApi:
    def __init__(self, invoker: ProxyInvoker, catalog: RouteCatalog, async_api: AsyncApi) -> None:
        self.invoker = invoker
        self.catalog = catalog
        self.async_api = async_api

    def routes(self) -> list[BaseRoute]:
        return [Route("/2015-03-31/functions/{name}/invocations", self.invoke, methods=["POST"])]

    async def invoke(self, request: Request) -> Response:
        """
        summary: AWS Lambda's Invoke (RequestResponse, Event, DryRun) for boto3 and the AWS CLI.
        responses:
          200: {description: the function's result (X-Amz-Function-Error when it raised)}
          202: {description: queued (Event)}
          204: {description: the function exists (DryRun)}
        """
        try:
            return await self._invoke(request)
        except NestError as error:
            return _aws_error(error)

    async def _invoke(self, request: Request) -> Response:
        name = _function_name(request.path_params["name"])
        route = self.catalog.route(name)
        qualifier = request.query_params.get("Qualifier")
        if route is None or (qualifier not in {None, "$LATEST", route.key.version}):
            raise NotFound("function", f"{name}:{qualifier}" if qualifier else name)
        kind = request.headers.get("x-amz-invocation-type", "RequestResponse")
        body = await _read(request, min(SYNC_PAYLOAD_MAX, route.max_body_bytes))
        if body.strip():
            try:
                json.loads(body)
            except ValueError:
                raise InvalidInput("payload", "is not valid JSON (Lambda's Invoke takes a JSON event)") from None
        if kind == "DryRun":
            return Response(status_code=204)
        if kind == "Event":
            headers = {"content-type": "application/json"}
            submitted = await self.async_api.enqueue(name, body, method="POST", path="/", query="", headers=headers)
            return Response(status_code=202, headers={"x-amzn-requestid": submitted.task.id})
        if kind != "RequestResponse":
            raise InvalidInput("X-Amz-Invocation-Type", f"{kind!r} is not RequestResponse, Event or DryRun")
        answer = await self.invoker.call(
            name, body=body, headers=[(b"content-type", b"application/json"), DIRECT_HEADER]
        )
        return _sync_result(answer, version=route.key.version)


def _sync_result(answer: Answer, *, version: str) -> Response:
    headers = {"x-amz-executed-version": version}
    if answer.ok:
        content_type = (answer.header(b"content-type") or b"application/json").decode()
        return Response(answer.body, status_code=200, headers=headers, media_type=content_type)
    failure = answer.failure()
    if failure.error_type == "no_capacity":
        raise TooManyRequests(_reason(answer) or "no capacity for the function now; retry", retry_after_s=1.0)
    if failure.error_type == "not_found":
        raise NotFound("function", _reason(answer))
    error_type = failure.error_type or f"HTTP{answer.status}"
    if error_type == "timeout":
        error_type = "Sandbox.Timedout"
    body = {"errorMessage": _reason(answer) or f"the function answered {answer.status}", "errorType": error_type}
    return JSONResponse(
        {**body, "stackTrace": []}, status_code=200, headers={**headers, "x-amz-function-error": "Unhandled"}
    )


def _reason(answer: Answer) -> str:
    try:
        document: Any = json.loads(answer.body)
    except ValueError:
        return answer.body.decode("utf-8", errors="replace")[:1000]
    return str(document.get("reason", "")) if isinstance(document, dict) else ""


def _aws_error(error: NestError) -> Response:
    aws_name, status = next(
        ((name, code) for kind, name, code in ERROR_TYPES if isinstance(error, kind)), ("ServiceException", 500)
    )
    headers = {"x-amzn-errortype": aws_name}
    if isinstance(error, TooManyRequests):
        headers["retry-after"] = str(max(1, round(error.retry_after_s)))
    return JSONResponse({"Type": "User", "message": error.message}, status_code=status, headers=headers)


def _function_name(raw: str) -> str:
    """A name, a partial ARN (`123:function:name`) or a full ARN; Nest only has names (`$LATEST` qualifier)."""
    name = raw.rsplit(":function:", 1)[-1].split(":", 1)[0]
    if not NAME_PATTERN.match(name):
        raise NotFound("function", raw)
    return name


async def _read(request: Request, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("payload", limit)
        parts.append(chunk)
    return b"".join(parts)
