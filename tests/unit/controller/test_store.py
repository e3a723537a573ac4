from __future__ import annotations

from typing import TYPE_CHECKING

from controller.store.sqlite import SqliteStore, VersionRecord

if TYPE_CHECKING:
    from pathlib import Path


def record(version: str, at: float, function: str = "hello") -> VersionRecord:
    return VersionRecord(function, version, f"digest-{version}", '{"name": "hello"}', at)


async def test_versions_are_recorded_and_the_latest_is_tracked(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    assert await store.put_version(record("v1", 1.0))
    assert not await store.put_version(record("v1", 2.0)), "the same version again is a no-op"
    assert await store.put_version(record("v2", 3.0))
    function = await store.get_function("hello")
    assert function is not None
    assert (function.latest_version, function.created_at, function.updated_at) == ("v2", 1.0, 3.0)
    assert [v.version for v in await store.list_versions("hello")] == ["v2", "v1"]
    assert await store.put_version(record("v1", 4.0)), "going back to an older version makes it latest again"
    latest = await store.get_function("hello")
    assert latest is not None
    assert latest.latest_version == "v1"
    await store.close()


async def test_state_survives_a_reopen_and_delete_removes_versions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    await store.put_version(record("v1", 1.0))
    await store.put_version(record("w1", 1.0, function="other"))
    await store.close()
    again = SqliteStore(tmp_path / "state.db")
    await again.open()
    assert [f.name for f in await again.list_functions()] == ["hello", "other"]
    assert await again.delete_function("hello")
    assert not await again.delete_function("hello")
    assert await again.get_version("hello", "v1") is None
    assert await again.code_digests() == {"digest-w1"}
    await again.close()
