from __future__ import annotations

import asyncio
from pathlib import Path

from controller.backends.base import InstanceSpec
from controller.fleet import Fleet
from nest.contracts.ids import FunctionName, InstanceId, VersionId
from nest.contracts.model import InitFailure, ScalingSpec, VersionKey
from tests.fakes.backend import FakeBackend
from tests.fakes.publisher import FakeRoutePublisher

V1 = VersionKey(FunctionName("f"), VersionId("v1"))
V2 = VersionKey(FunctionName("f"), VersionId("v2"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def template(key: VersionKey) -> InstanceSpec:
    return InstanceSpec(InstanceId(""), key, Path("/code"), "main:handle", "native")


def make() -> tuple[Fleet, FakeBackend, FakeRoutePublisher, Clock]:
    publisher, clock = FakeRoutePublisher(), Clock()
    fleet = Fleet(publisher, clock=clock)
    backend = FakeBackend(fleet.on_event)
    fleet.backend = backend
    return fleet, backend, publisher, clock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_scaling_up_starts_instances_and_publishes_them_when_ready() -> None:
    fleet, backend, publisher, _ = make()
    fleet.register(template(V1), ScalingSpec())
    await fleet.scale(V1, 2, "up")
    await fleet.reconcile()
    assert len(backend.started) == 2
    assert len(publisher.endpoints[V1]) == 2
    assert fleet.counts(V1) == (2, 0)
    assert fleet.scaling_status(V1)["decisions"][0]["reason"] == "up"


async def test_scaling_down_leaves_routing_before_stopping() -> None:
    fleet, backend, publisher, _ = make()
    fleet.register(template(V1), ScalingSpec())
    await fleet.scale(V1, 2, "up")
    await fleet.reconcile()
    await fleet.scale(V1, 1, "down")
    await fleet.reconcile()
    assert len(publisher.endpoints[V1]) == 1
    await settle()
    assert len(backend.stopped) == 1
    assert backend.stopped[0] not in {a.instance_id for a in publisher.endpoints[V1]}


async def test_min_instances_start_on_register() -> None:
    fleet, backend, _, _ = make()
    fleet.register(template(V1), ScalingSpec(min=3))
    await fleet.reconcile()
    assert len(backend.started) == 3


async def test_a_crashed_instance_is_replaced() -> None:
    fleet, backend, publisher, _ = make()
    fleet.register(template(V1), ScalingSpec(min=1))
    await fleet.reconcile()
    backend.crash(backend.started[0].instance_id)
    assert publisher.endpoints[V1] == []
    await fleet.reconcile()
    assert len(backend.started) == 2
    assert len(publisher.endpoints[V1]) == 1


async def test_init_failures_are_reported_and_retried_with_backoff() -> None:
    fleet, backend, publisher, clock = make()
    backend.fail_with = InitFailure(V1, "ImportError", "no module", at=0.0)
    fleet.register(template(V1), ScalingSpec())
    await fleet.scale(V1, 3, "activate")
    await fleet.reconcile()
    assert len(backend.started) == 3  # no failure known yet: all three were asked for
    assert len(publisher.failures) == 3
    failure = fleet.last_failure(V1)
    assert failure is not None
    assert failure.error_type == "ImportError"
    await fleet.reconcile()
    assert len(backend.started) == 3, "backing off"
    clock.now += 120
    backend.fail_with = None
    await fleet.reconcile()
    assert len(backend.started) == 4, "one probe instance after the backoff"
    await fleet.reconcile()
    assert len(backend.started) == 6, "healthy again: the rest follow"


async def test_a_new_version_replaces_the_old_one() -> None:
    fleet, backend, _, _ = make()
    fleet.register(template(V1), ScalingSpec(min=1))
    await fleet.reconcile()
    fleet.register(template(V2), ScalingSpec(min=1))
    fleet.unregister(V1)
    await fleet.reconcile()
    await settle()
    assert [s.key for s in backend.running.values()] == [V2]
    await fleet.shutdown(grace_s=1)
    assert backend.running == {}


async def test_a_new_version_takes_over_the_old_ones_instance_count_within_its_max() -> None:
    fleet, backend, _, _ = make()
    fleet.register(template(V1), ScalingSpec())
    await fleet.scale(V1, 3, "up")
    await fleet.reconcile()
    fleet.register(template(V2), ScalingSpec(max=2), takeover=V1)
    fleet.unregister(V1)
    await fleet.reconcile()
    await settle()
    assert [s.key for s in backend.running.values()] == [V2, V2]
    reasons = [decision["reason"] for decision in fleet.scaling_status(V2)["decisions"]]
    assert reasons == ["redeploy: takes over the 2 instance(s) of version v1"]


async def test_a_new_version_of_an_idle_function_starts_at_its_min() -> None:
    fleet, backend, _, _ = make()
    fleet.register(template(V1), ScalingSpec())
    fleet.register(template(V2), ScalingSpec(min=1), takeover=V1)
    fleet.unregister(V1)
    await fleet.reconcile()
    assert [s.key for s in backend.started] == [V2]
    assert fleet.scaling_status(V2)["decisions"] == []
