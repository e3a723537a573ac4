"""Suite-wide hygiene: no asyncio task may outlive the test that started it (after kopf's
`_no_asyncio_pending_tasks`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis checks properties, not speed: on a shared 2-core machine an example can take longer than the default
# 200 ms deadline without anything being wrong, so no deadline and no too-slow health check.
settings.register_profile("nest", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nest")

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(autouse=True)
async def _no_leaked_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    if not request.node.get_closest_marker("asyncio") and not asyncio.iscoroutinefunction(request.function):
        yield
        return
    before = asyncio.all_tasks()
    yield
    for _ in range(3):  # let cancellations and done-callbacks settle
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks leaked by the test: {leaked}"
