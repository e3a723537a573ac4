from __future__ import annotations

from collections import Counter

from hypothesis import given, strategies as st

from gateway.asyncq.fairness import FairState, QueueKey, forget, pick, shares, weight

HIGH = QueueKey("checkout", 3)
LOW = QueueKey("reports", 0)


def _serve(ready: list[QueueKey], rounds: int, state: FairState | None = None) -> tuple[Counter[QueueKey], FairState]:
    state = state or FairState()
    served: Counter[QueueKey] = Counter()
    for _ in range(rounds):
        chosen, state = pick(state, ready)
        assert chosen is not None
        served[chosen] += 1
    return served, state


def test_shares_follow_the_priority_weights_without_starving_the_low_priority() -> None:
    served, _ = _serve([HIGH, LOW], 900)
    assert served[LOW] == 100, "priority 0 gets 1/(1 + 2**3) of the dispatches"
    assert served[HIGH] == 800


def test_functions_of_the_same_priority_alternate_however_deep_one_backlog_is() -> None:
    served, _ = _serve([QueueKey("a", 1), QueueKey("b", 1), QueueKey("c", 1)], 300)
    assert set(served.values()) == {100}


def test_an_idle_queue_rejoins_at_the_floor_and_claims_no_missed_dispatches() -> None:
    _, state = _serve([LOW], 1000)
    served, _ = _serve([LOW, QueueKey("newcomer", 0)], 10, state)
    assert served[QueueKey("newcomer", 0)] in {5, 6}, "an equal share, not a burst of 1000"


def test_nothing_ready_picks_nothing() -> None:
    assert pick(FairState(), []) == (None, FairState())


def test_forget_drops_deleted_functions() -> None:
    _, state = _serve([HIGH, LOW], 4)
    assert [key for key, _ in forget(state, [LOW]).passes] == [HIGH]


@given(
    priorities=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    rounds=st.integers(1, 400),
)
def test_every_ready_queue_is_served_within_its_fair_bound(priorities: list[int], rounds: int) -> None:
    ready = [QueueKey(f"f{index}", priority) for index, priority in enumerate(priorities)]
    served, state = _serve(ready, rounds)
    total_weight = sum(weight(key.priority) for key in ready)
    for key in ready:
        fair = rounds * weight(key.priority) / total_weight
        assert abs(served[key] - fair) <= len(ready), (key, served[key], fair)
    again, _ = _serve(ready, rounds)
    assert again == served, "the same inputs give the same choices"
    assert abs(sum(shares(served).values()) - 1.0) < 1e-9
    assert all(pass_ >= state.floor for _, pass_ in state.passes)
