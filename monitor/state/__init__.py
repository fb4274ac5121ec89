"""State back-ends: SQLite (embedded default) and Redis (shared by replicas)."""

from __future__ import annotations

from monitor.state.base import Store

__all__ = ["Store", "open_store"]


def open_store(location: str) -> Store:
    """Pick the back-end from one setting: ``redis://``/``rediss://`` URL, else a SQLite path."""
    if location.startswith(("redis://", "rediss://", "unix://")):
        from monitor.state.redis import RedisStore

        return RedisStore(location)
    from monitor.state.sqlite import SQLiteStore

    return SQLiteStore(location)
