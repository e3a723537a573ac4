"""Per-version traffic counters: in-flight, queued, arrived, completed, and time-weighted concurrency.

The activator updates a `TrafficCounter` on every request (a few integer operations and one clock read, because
this is the hot path); the autoscaler reads and resets it once a tick through `RoutingTable.collect`. Concurrency
is the *time-weighted* mean of in-flight plus queued requests over the interval, as Knative's queue-proxy reports
it: a request in flight for half of a 1 s tick counts 0.5. `arrived` counts admissions (a request sent straight
to an instance or queued for one; a refused one is not admitted), so QPS is the rate at which work *arrives*,
not the rate at which it completes: a load that outgrows its instances shows at once, while completions are
capped by the capacity already there (and lag a long request by its duration).
"""

from __future__ import annotations


class TrafficCounter:
    """Counts for one version. `now` is `time.monotonic()` seconds, read by the caller."""

    __slots__ = ("_area", "_interval_start", "_level_since", "arrived", "completed", "in_flight", "queued", "total")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.queued = 0
        self.arrived = 0
        """Requests admitted since the last `collect` (one integer increment per request: no allocation)."""
        self.completed = 0
        """Requests finished since the last `collect`."""
        self.total = 0
        """Requests finished since the counter was created (for Prometheus)."""
        self._area = 0.0
        self._level_since = now
        self._interval_start = now

    def _advance(self, now: float) -> None:
        self._area += (self.in_flight + self.queued) * (now - self._level_since)
        self._level_since = now

    def started(self, now: float) -> None:
        """A request went straight to an instance."""
        self._advance(now)
        self.in_flight += 1
        self.arrived += 1

    def enqueued(self, now: float) -> None:
        """A request is waiting in the activator's buffer."""
        self._advance(now)
        self.queued += 1
        self.arrived += 1

    def dequeued(self, *, served: bool, now: float) -> None:
        """A waiting request left the buffer: handed to an instance (`served`) or given up (deadline, error)."""
        self._advance(now)
        self.queued -= 1
        if served:
            self.in_flight += 1

    def finished(self, now: float) -> None:
        """A request that was in flight ended, however it ended."""
        self._advance(now)
        self.in_flight -= 1
        self.completed += 1
        self.total += 1

    def collect(self, now: float) -> tuple[float, float, int]:
        """(mean concurrency, interval seconds, completed) since the last call; resets the interval."""
        self._advance(now)
        interval = now - self._interval_start
        mean = self._area / interval if interval > 0 else float(self.in_flight + self.queued)
        completed = self.completed
        self._area = 0.0
        self._interval_start = now
        self.completed = 0
        return mean, interval, completed

    def take_arrived(self) -> int:
        """Requests admitted since the last call; resets the count (the reader calls it with `collect`)."""
        arrived, self.arrived = self.arrived, 0
        return arrived
