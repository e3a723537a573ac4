"""Which function a request path names, and the path the function sees.

Pure: no I/O, no clock reads. `gateway/routing.py` keeps the table of extra paths and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass

FUNCTION_PREFIX = "/function/"
RESERVED_SUBPATH = "/__nest__"


@dataclass(frozen=True, slots=True)
class PathTable:
    """Extra gateway paths from manifests' `http.paths`: exact ones, and prefixes (longest first)."""

    exact: dict[str, str]
    prefixes: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, paths_by_function: dict[str, tuple[str, ...]]) -> PathTable:
        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for function, paths in sorted(paths_by_function.items()):
            for path in paths:
                if path.endswith("/*"):
                    prefixes.append((path[:-2], function))
                else:
                    exact.setdefault(path, function)
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        return cls(exact, tuple(prefixes))


def split_function_path(path: str) -> tuple[str, str] | None:
    """`/function/hello/a/b` -> ("hello", "/a/b"); `/function/hello` -> ("hello", "/"); other paths -> None."""
    if not path.startswith(FUNCTION_PREFIX):
        return None
    rest = path[len(FUNCTION_PREFIX) :]
    name, slash, subpath = rest.partition("/")
    return name, "/" + subpath if slash else "/"


def match_extra_path(table: PathTable, path: str) -> tuple[str, str] | None:
    """The function an extra path reaches, and the path it sees (the whole path, as in fission's HTTP triggers)."""
    function = table.exact.get(path)
    if function is not None:
        return function, path
    for prefix, function in table.prefixes:
        if path == prefix or path.startswith(prefix + "/"):
            return function, path
    return None


def is_reserved_subpath(subpath: str) -> bool:
    """The runtime's own endpoints (`/__nest__/...`) are never reachable from outside."""
    return subpath == RESERVED_SUBPATH or subpath.startswith(RESERVED_SUBPATH + "/")
