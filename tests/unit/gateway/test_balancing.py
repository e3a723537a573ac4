from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, strategies as st

from gateway.balancing import pick_instance


@dataclass
class Slot:
    in_flight: int
    capacity: int


def test_full_slots_are_skipped_and_none_means_wait() -> None:
    assert pick_instance([Slot(1, 1), Slot(1, 1)]) is None
    assert pick_instance([]) is None
    assert pick_instance([Slot(1, 1), Slot(0, 1)]) == 1


def test_ties_rotate_with_the_start_index() -> None:
    slots = [Slot(2, 3), Slot(0, 3), Slot(0, 3)]
    assert pick_instance(slots, 0) == 1
    assert pick_instance(slots, 2) == 2


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), max_size=12),
    st.integers(0, 100),
)
def test_the_pick_is_a_least_loaded_slot_with_room(pairs: list[tuple[int, int]], start: int) -> None:
    slots = [Slot(min(load, cap), cap) for load, cap in pairs]
    chosen = pick_instance(slots, start)
    free = [s for s in slots if s.in_flight < s.capacity]
    if not free:
        assert chosen is None
    else:
        assert chosen is not None
        assert slots[chosen].in_flight < slots[chosen].capacity
        assert slots[chosen].in_flight == min(s.in_flight for s in free)
