"""Fixtures for the state tests: the same store factory on SQLite and on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from monitor.state.redis import RedisStore
from monitor.state.sqlite import SQLiteStore

AnyStore = SQLiteStore | RedisStore
StoreFactory = Callable[[], Awaitable[AnyStore]]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the state lives: a SQLite file in a fresh folder, or a flushed redis-server."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(tmp_path / "var" / "state.sqlite3")


@pytest.fixture
async def make_store(location: str) -> AsyncIterator[StoreFactory]:
    """Opens another store on the same state (a restart, or a second replica)."""
    opened: list[AnyStore] = []

    async def make() -> AnyStore:
        store: AnyStore = (
            RedisStore(location) if location.startswith("redis://") else SQLiteStore(location)
        )
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> AnyStore:
    """One opened store."""
    return await make_store()
