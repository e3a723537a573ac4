"""The one error tree of Nest. Components subclass these; nobody starts a second root.

```
NestError
  InvalidInput(field, problem)       -> 400   bad manifest / request / package
    PayloadTooLarge(limit_bytes)     -> 413
  NotFound(kind, name)               -> 404
  Conflict(kind, name, problem)      -> 409
  TooManyRequests(reason, retry_after_s) -> 429   backpressure: a function's async backlog is full
  Unavailable(reason)                -> 503   NoCapacity, BufferFull, Draining
    BufferFull
    Draining
  DeadlineExceeded(phase, waited_s)  -> 504   e.g. the cold start did not finish in time
  FunctionInitFailed(function, ...)  -> 502   the function's code could not be loaded
  BackendError(reason)               -> 502   always `raise ... from exc`
```

The HTTP status of each class lives in one table, `gateway/errors.py`; messages name the thing and the fault.
"""

from __future__ import annotations


class NestError(Exception):
    """Root of every error Nest raises on purpose."""

    code = "nest_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(NestError):
    """A manifest, request or package is wrong; `field` names where, `problem` says what and the fix."""

    code = "invalid_input"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class PayloadTooLarge(InvalidInput):
    """A body larger than its limit; raised before the whole body is read."""

    code = "payload_too_large"

    def __init__(self, what: str, limit_bytes: int) -> None:
        super().__init__(what, f"larger than the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class NotFound(NestError):
    """No `kind` called `name` exists."""

    code = "not_found"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class Conflict(NestError):
    """The request collides with the current state of `kind` `name`."""

    code = "conflict"

    def __init__(self, kind: str, name: str, problem: str) -> None:
        super().__init__(f"{kind} {name!r}: {problem}")
        self.kind = kind
        self.name = name


class TooManyRequests(NestError):
    """The caller should slow down: retry after `retry_after_s` seconds (sent as `Retry-After`)."""

    code = "too_many_requests"

    def __init__(self, reason: str, *, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Unavailable(NestError):
    """Nest cannot take the request now; `reason` says why. Retrying later may succeed."""

    code = "unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BufferFull(Unavailable):
    """The activator's bounded buffer for a function is full."""

    code = "buffer_full"


class Draining(Unavailable):
    """Nest is shutting down and takes no new requests."""

    code = "draining"


class DeadlineExceeded(NestError):
    """`phase` did not finish within `waited_s` seconds."""

    code = "deadline_exceeded"

    def __init__(self, phase: str, waited_s: float, detail: str = "") -> None:
        message = f"{phase} did not finish within {waited_s:.1f}s"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.phase = phase
        self.waited_s = waited_s


class FunctionInitFailed(NestError):
    """The function's code could not be loaded (import error, syntax error, missing handler)."""

    code = "init_failed"

    def __init__(self, function: str, error_type: str, detail: str) -> None:
        super().__init__(f"function {function!r} failed to initialise: {error_type}: {detail}")
        self.function = function
        self.error_type = error_type
        self.detail = detail


class BackendError(NestError):
    """The machinery under Nest failed (an instance vanished mid-request, a process could not start)."""

    code = "backend_error"
