"""The zygote's code relocation: what a rehearsal runs is found, and those functions get copies of their code."""

from __future__ import annotations

import threading
import types

from runtime.rehearsal import _executed, _relocate


def _outer(value: int) -> int:
    def inner() -> int:
        return value + 1

    return inner()


def _cold() -> int:
    return 2


def test_the_code_run_is_found_in_every_thread() -> None:
    def in_thread() -> None:
        thread = threading.Thread(target=_cold)
        thread.start()
        thread.join()

    seen = _executed(lambda: _outer(1))
    assert id(_outer.__code__) in seen
    assert id(_cold.__code__) not in seen
    assert id(_cold.__code__) in _executed(in_thread)


def test_hot_functions_get_a_copy_of_their_code_and_cold_ones_keep_theirs() -> None:
    def hot(value: int) -> int:
        def nested() -> int:
            return value * 3

        return nested()

    def cold() -> int:
        return 5

    hot_code, cold_code = hot.__code__, cold.__code__
    nested_code = next(c for c in hot_code.co_consts if isinstance(c, types.CodeType))
    originals = _relocate({id(hot_code): hot_code, id(nested_code): nested_code})

    assert hot.__code__ is not hot_code
    assert hot.__code__ == hot_code
    assert cold.__code__ is cold_code
    assert originals == [hot_code, nested_code]
    copied_nested = next(c for c in hot.__code__.co_consts if isinstance(c, types.CodeType))
    assert copied_nested is not nested_code  # closures made from now on run the copy too
    assert hot(2) == 6
    assert cold() == 5
