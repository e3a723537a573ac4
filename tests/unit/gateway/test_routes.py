from __future__ import annotations

import pytest

from gateway.routes import PathTable, is_reserved_subpath, match_extra_path, split_function_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/function/hello", ("hello", "/"), id="bare"),
        pytest.param("/function/hello/", ("hello", "/"), id="trailing-slash"),
        pytest.param("/function/hello/a/b", ("hello", "/a/b"), id="subpath"),
        pytest.param("/api/v1/functions", None, id="not-a-function"),
    ],
)
def test_function_paths_split_into_name_and_subpath(path: str, expected: tuple[str, str] | None) -> None:
    assert split_function_path(path) == expected


def test_extra_paths_match_exact_first_then_the_longest_prefix() -> None:
    table = PathTable.build({"a": ("/hello", "/api/*"), "b": ("/api/admin/*",)})
    assert match_extra_path(table, "/hello") == ("a", "/hello")
    assert match_extra_path(table, "/api/x") == ("a", "/api/x")
    assert match_extra_path(table, "/api/admin/users") == ("b", "/api/admin/users")
    assert match_extra_path(table, "/apix") is None


def test_the_runtime_endpoints_are_not_reachable_from_outside() -> None:
    assert is_reserved_subpath("/__nest__/health")
    assert not is_reserved_subpath("/__nestle")
