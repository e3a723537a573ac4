"""The activator: hands each request an instance slot, or holds it in a bounded buffer until one is free.

One `VersionGate` per function version plays Knative's activator and queue-proxy breaker at once: instances have
`capacity` slots (the function's `concurrency`); a request takes the least-loaded free slot at once (the fast
path: no await, no allocation beyond the counter update); when none is free it waits, FIFO, in a buffer of at
most `buffer_size` requests with a deadline, and the scaler is poked *at once*. A released slot or a newly ready
instance goes straight to the oldest waiter. The outcomes are typed errors that `gateway/errors.py` maps to HTTP:
full buffer -> `BufferFull` (503), deadline -> `DeadlineExceeded` (504, saying why: e.g. the last init failure),
init failure -> `FunctionInitFailed` (502, at once: an immutable version that failed to import will fail again).
Never a hang.

Routing of paths to versions lives in `gateway/routing.py`; choosing among free slots in `gateway/balancing.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from gateway.balancing import pick_instance
from gateway.inflight import TrafficCounter
from nest.contracts.errors import BufferFull, DeadlineExceeded, FunctionInitFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from nest.contracts.ids import InstanceId
    from nest.contracts.model import InitFailure, InstanceAddress, VersionKey


class Endpoint:
    """One ready instance as the gateway tracks it. Mutable, owned by its gate."""

    __slots__ = ("address", "capacity", "in_flight", "routable", "socket_path", "timing_sent")

    def __init__(self, address: InstanceAddress) -> None:
        self.address = address
        self.socket_path = address.socket_path
        self.capacity = address.concurrency
        self.in_flight = 0
        self.routable = True
        """False once the instance left the endpoint set: in-flight requests finish, no new ones arrive."""
        self.timing_sent = False
        """Whether a response already carried this instance's start phases in `Server-Timing`."""


class VersionGate:
    """Slots and the waiting buffer for one version."""

    def __init__(
        self,
        key: VersionKey,
        *,
        buffer_size: int,
        on_demand: Callable[[VersionKey, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.buffer_size = buffer_size
        self.traffic = TrafficCounter(clock())
        self.endpoints: list[Endpoint] = []
        self.failure: InitFailure | None = None
        self._on_demand = on_demand
        self._clock = clock
        self._waiters: deque[asyncio.Future[Endpoint]] = deque()
        self._next = 0

    @property
    def waiting(self) -> int:
        return self.traffic.queued

    def try_acquire(self) -> Endpoint | None:
        """A free slot at once, or None. The caller must `release` what it gets."""
        endpoints = self.endpoints
        if not endpoints or self._waiters:
            return None
        self._next += 1
        index = pick_instance(endpoints, self._next)
        if index is None:
            return None
        endpoint = endpoints[index]
        endpoint.in_flight += 1
        self.traffic.started(self._clock())
        return endpoint

    async def acquire(self, *, timeout_s: float) -> Endpoint:
        """A slot, waiting up to `timeout_s` in the buffer. Raises `BufferFull`, `DeadlineExceeded`, init failure."""
        endpoint = self.try_acquire()
        if endpoint is not None:
            return endpoint
        if self.failure is not None and not self.endpoints:
            self._on_demand(self.key, 1)  # keep asking: the controller retries the start with a backoff
            raise self._init_error(self.failure)
        if len(self._waiters) >= self.buffer_size:
            raise BufferFull(
                f"function {self.key.function!r} has {len(self._waiters)} requests waiting for an instance"
                f" (buffer limit {self.buffer_size}); retry later"
            )
        waiter: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.traffic.enqueued(self._clock())
        self._on_demand(self.key, len(self._waiters))
        started = self._clock()
        served = False
        try:
            async with asyncio.timeout(timeout_s):
                endpoint = await waiter
            served = True
            return endpoint
        except TimeoutError:
            raise DeadlineExceeded(
                f"waiting for an instance of {self.key.function!r}", self._clock() - started, self._why_not_ready()
            ) from None
        finally:
            if not served:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.release(waiter.result())  # handed a slot just as the caller went away
                else:
                    self._forget(waiter)

    def _forget(self, waiter: asyncio.Future[Endpoint]) -> None:
        """Take a waiter that will not be served out of the buffer."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        if not waiter.done():
            waiter.cancel()
        self.traffic.dequeued(served=False, now=self._clock())

    def release(self, endpoint: Endpoint) -> None:
        """Give a slot back: to the oldest waiter if the endpoint is still routable, else to the pool."""
        now = self._clock()
        endpoint.in_flight -= 1
        self.traffic.finished(now)
        if endpoint.routable and self._waiters:
            self._hand_over(endpoint, now)

    def _hand_over(self, endpoint: Endpoint, now: float) -> None:
        while self._waiters and endpoint.in_flight < endpoint.capacity:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            endpoint.in_flight += 1
            self.traffic.dequeued(served=True, now=now)
            waiter.set_result(endpoint)

    def set_endpoints(self, addresses: Iterable[InstanceAddress]) -> None:
        """Replace the ready instances; new ones take waiting requests at once, removed ones drain."""
        wanted = {address.instance_id: address for address in addresses}
        kept: list[Endpoint] = []
        for endpoint in self.endpoints:
            if endpoint.address.instance_id in wanted:
                kept.append(endpoint)
                del wanted[endpoint.address.instance_id]
            else:
                endpoint.routable = False
        kept.extend(Endpoint(address) for address in wanted.values())
        self.endpoints = kept
        if kept:
            self.failure = None
        now = self._clock()
        for endpoint in kept:
            if not self._waiters:
                break
            self._hand_over(endpoint, now)

    def remove_endpoint(self, instance_id: InstanceId) -> None:
        """Stop routing to one instance now (it crashed, or asked to be recycled)."""
        self.set_endpoints(e.address for e in self.endpoints if e.address.instance_id != instance_id)

    def fail(self, failure: InitFailure) -> None:
        """An instance could not load the code: fail the waiting requests now if nothing else can serve them."""
        self.failure = failure
        if self.endpoints:
            return
        error = self._init_error(failure)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.traffic.dequeued(served=False, now=self._clock())
                waiter.set_exception(error)

    def idle(self) -> bool:
        """Nothing routed, waiting or in flight: the gate can be dropped once its version has no route."""
        return not self.endpoints and not self._waiters and self.traffic.in_flight == 0

    def _init_error(self, failure: InitFailure) -> FunctionInitFailed:
        return FunctionInitFailed(self.key.function, failure.error_type, failure.detail)

    def _why_not_ready(self) -> str:
        if self.failure is not None:
            return f"its last start failed: {self.failure.error_type}: {self.failure.detail}"
        if self.endpoints:
            return f"all {len(self.endpoints)} instances stayed busy"
        return "no instance became ready in time (see `nest describe` and `nest logs`)"
