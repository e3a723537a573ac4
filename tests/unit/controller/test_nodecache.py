"""The node cache's eviction choice: never what runs, old versions before current ones, LRU, stop once it fits."""

from __future__ import annotations

from hypothesis import given, strategies as st

from controller.codestore.nodecache import CacheEntry, select_evictions


def entry(digest: str, size: int, last_used: float) -> CacheEntry:
    return CacheEntry(digest, size, last_used)


@st.composite
def caches(draw: st.DrawFn) -> tuple[list[CacheEntry], int, set[str], set[str]]:
    digests = draw(st.lists(st.text("abcdef0123456789", min_size=4, max_size=4), unique=True, max_size=12))
    entries = [entry(d, draw(st.integers(0, 1000)), draw(st.floats(0, 100, allow_nan=False))) for d in digests]
    in_use = set(draw(st.lists(st.sampled_from(digests), max_size=4))) if digests else set()
    current = set(draw(st.lists(st.sampled_from(digests), max_size=6))) if digests else set()
    return entries, draw(st.integers(0, 6000)), in_use, current


def test_the_docstring_example() -> None:
    entries = [entry("old", 60, 1), entry("cur", 50, 0), entry("run", 30, 5)]
    selection = select_evictions(entries, budget=100, in_use={"run"}, current={"cur"})
    assert selection.evict == ("old",)
    assert (selection.total, selection.kept, selection.freed) == (140, 80, 60)


def test_current_packages_go_once_the_others_are_gone() -> None:
    entries = [entry("old", 10, 9), entry("cur", 50, 0), entry("run", 30, 5)]
    assert select_evictions(entries, budget=40, in_use={"run"}, current={"cur"}).evict == ("old", "cur")


def test_what_runs_stays_even_over_budget() -> None:
    selection = select_evictions([entry("run", 30, 0), entry("x", 5, 0)], budget=10, in_use={"run"}, current=set())
    assert selection.evict == ("x",)
    assert selection.kept == 30


@given(caches())
def test_never_evicts_a_package_in_use(cache: tuple[list[CacheEntry], int, set[str], set[str]]) -> None:
    entries, budget, in_use, current = cache
    assert not set(select_evictions(entries, budget=budget, in_use=in_use, current=current).evict) & in_use


@given(caches())
def test_fits_the_budget_whenever_the_packages_in_use_do(
    cache: tuple[list[CacheEntry], int, set[str], set[str]],
) -> None:
    entries, budget, in_use, current = cache
    selection = select_evictions(entries, budget=budget, in_use=in_use, current=current)
    sizes = {e.digest: e.size for e in entries}
    assert selection.kept == sum(sizes.values()) - sum(sizes[d] for d in selection.evict)
    protected = sum(e.size for e in entries if e.digest in in_use)
    if protected <= budget:
        assert selection.kept <= budget
    else:  # everything that may go went
        assert set(selection.evict) == {e.digest for e in entries if e.digest not in in_use}


@given(caches())
def test_evicts_no_more_than_needed(cache: tuple[list[CacheEntry], int, set[str], set[str]]) -> None:
    entries, budget, in_use, current = cache
    selection = select_evictions(entries, budget=budget, in_use=in_use, current=current)
    if not selection.evict:
        return
    sizes = {e.digest: e.size for e in entries}
    assert selection.total > budget
    before_last = selection.kept + sizes[selection.evict[-1]]
    assert before_last > budget, "the last eviction was needed"


@given(caches())
def test_old_versions_first_then_least_recently_used(cache: tuple[list[CacheEntry], int, set[str], set[str]]) -> None:
    entries, budget, in_use, current = cache
    evicted = select_evictions(entries, budget=budget, in_use=in_use, current=current).evict
    rank = {e.digest: (e.digest in current, e.last_used, e.digest) for e in entries}
    kept = [e.digest for e in entries if e.digest not in evicted and e.digest not in in_use]
    assert [rank[d] for d in evicted] == sorted(rank[d] for d in evicted), "in eviction order"
    if evicted and kept:
        assert max(rank[d] for d in evicted) < min(rank[d] for d in kept), "nothing kept ranks before an evicted one"


@given(caches())
def test_within_budget_nothing_goes(cache: tuple[list[CacheEntry], int, set[str], set[str]]) -> None:
    entries, _, in_use, current = cache
    total = sum(e.size for e in entries)
    assert select_evictions(entries, budget=total, in_use=in_use, current=current).evict == ()
