from __future__ import annotations

from hypothesis import given, strategies as st

from controller.reconciler import (
    Backoff,
    InstanceState,
    InstanceView,
    Start,
    Stop,
    backoff_after,
    plan,
)
from nest.contracts.ids import FunctionName, InstanceId, VersionId
from nest.contracts.model import VersionKey

V1 = VersionKey(FunctionName("f"), VersionId("v1"))
V2 = VersionKey(FunctionName("f"), VersionId("v2"))


def view(n: int, key: VersionKey = V1, state: InstanceState = InstanceState.READY, at: float = 0.0) -> InstanceView:
    return InstanceView(InstanceId(f"i{n}"), key, state, at)


def test_missing_instances_are_started() -> None:
    assert plan({V1: 3}, [view(1)], backoffs={}, now=0) == [Start(V1), Start(V1)]


def test_surplus_stops_starting_instances_first_then_the_newest_ready() -> None:
    instances = [view(1, at=1), view(2, at=3), view(3, state=InstanceState.STARTING, at=2)]
    assert plan({V1: 1}, instances, backoffs={}, now=0) == [
        Stop(InstanceId("i3"), "scaled to 1"),
        Stop(InstanceId("i2"), "scaled to 1"),
    ]


def test_instances_of_versions_no_longer_wanted_all_stop() -> None:
    actions = plan({V2: 1}, [view(1), view(2)], backoffs={}, now=0)
    assert Stop(InstanceId("i1"), "version no longer wanted") in actions
    assert Stop(InstanceId("i2"), "version no longer wanted") in actions
    assert Start(V2) in actions


def test_stopping_instances_are_left_alone_and_do_not_count() -> None:
    assert plan({V1: 1}, [view(1, state=InstanceState.STOPPING)], backoffs={}, now=0) == [Start(V1)]


def test_a_failing_version_waits_for_its_backoff_then_probes_with_one_instance() -> None:
    backoffs = {V1: Backoff(failures=2, retry_at=10.0)}
    assert plan({V1: 5}, [], backoffs=backoffs, now=9.9) == []
    assert plan({V1: 5}, [], backoffs=backoffs, now=10.0) == [Start(V1)]
    assert plan({V1: 5}, [view(1, state=InstanceState.STARTING)], backoffs=backoffs, now=11) == []


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff_after(n, 0).retry_at for n in (1, 2, 3, 4, 10)] == [1, 2, 4, 8, 60]


@given(st.integers(0, 20), st.lists(st.sampled_from(list(InstanceState)), max_size=20))
def test_after_the_plan_the_live_count_equals_the_desired_count(desired: int, states: list[InstanceState]) -> None:
    instances = [view(n, state=state, at=float(n)) for n, state in enumerate(states)]
    actions = plan({V1: desired}, instances, backoffs={}, now=0)
    live = sum(1 for i in instances if i.state is not InstanceState.STOPPING)
    starts = sum(1 for a in actions if isinstance(a, Start))
    stops = sum(1 for a in actions if isinstance(a, Stop))
    assert live + starts - stops == desired
    assert not (starts and stops)
