"""The pools file: what operators write, and the errors they get (each naming the field)."""

from __future__ import annotations

import pytest

from nest.contracts.pools import PoolSettings, PoolsFileError, parse_pools

GOOD = """
pools:
  default:
    min_idle: 1
  science:
    preload: [numpy, pandas.core]
    min_idle: 1
    max_idle: 6
    idle_ttl: 10m
    quiet_period: 90s
  plain:
"""


def test_a_pools_file_declares_pools_with_their_sizes_and_durations() -> None:
    pools = parse_pools(GOOD)
    assert set(pools) == {"default", "science", "plain"}
    assert pools["science"] == PoolSettings(
        preload=("numpy", "pandas.core"), min_idle=1, max_idle=6, idle_ttl=600.0, quiet_period=90.0
    )
    assert pools["plain"] == PoolSettings()
    assert pools["default"].min_idle == 1


def test_an_empty_file_declares_nothing() -> None:
    assert parse_pools("") == {}
    assert parse_pools("pools:\n") == {}


def test_preloads_may_be_a_comma_separated_string() -> None:
    assert parse_pools("pools: {web: {preload: 'httpx, pydantic'}}")["web"].preload == ("httpx", "pydantic")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        pytest.param(
            "pools: {x: {max_idle: 1, min_idle: 3}}", "pools.x", "max_idle (1) is below min_idle", id="min>max"
        ),
        pytest.param("pools: {x: {min_idle: -1}}", "pools.x.min_idle", "greater than or equal", id="negative"),
        pytest.param("pools: {x: {max_idle: 1000}}", "pools.x.max_idle", "less than or equal to 64", id="too-big"),
        pytest.param("pools: {x: {idle_ttl: soon}}", "pools.x.idle_ttl", "not a duration", id="duration"),
        pytest.param("pools: {x: {preload: ['os; rm']}}", "pools.x.preload", "not an importable module", id="module"),
        pytest.param("pools: {x: {preload: [a, a]}}", "pools.x.preload", "twice", id="duplicate"),
        pytest.param("pools: {x: {preloads: [a]}}", "pools.x.preloads", "unknown key", id="typo"),
        pytest.param("pools: {none: {}}", "pools", "reserved", id="none"),
        pytest.param("pools: {Big_Name: {}}", "pools", "not a pool name", id="name"),
        pytest.param("pool: {x: {}}", "pool", "unknown key", id="top-level-typo"),
        pytest.param("pools: [x]", "pools", "must map pool names", id="list"),
    ],
)
def test_bad_files_are_refused_naming_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(PoolsFileError) as caught:
        parse_pools(text)
    assert caught.value.problems[0][0] == field
    assert words in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PoolsFileError) as caught:
        parse_pools("pools: {a: {min_idle: -1}, b: {idle_ttl: x}}")
    assert [field for field, _ in caught.value.problems] == ["pools.a.min_idle", "pools.b.idle_ttl"]


def test_not_yaml_and_too_big_are_refused() -> None:
    with pytest.raises(PoolsFileError, match="not valid YAML"):
        parse_pools("pools: {a: [")
    with pytest.raises(PoolsFileError, match="larger than"):
        parse_pools("#" * 70_000)
    with pytest.raises(PoolsFileError, match="mapping with a `pools:` key"):
        parse_pools("- a")
