"""The Redis back-end refuses unsafe servers and fails cleanly when Redis dies or hangs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import tests.conftest
from monitor.errors import StoreError, StoreUnavailableError
from monitor.logs import mask_url
from monitor.models import Alert, Article, Delivery, Severity
from monitor.state.redis import RedisStore
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.redis

DAY = 86400.0


def article(n: int) -> Article:
    return Article(id=f"a{n}", feed="bbc-arabic", feed_url="https://example.org/ar.xml",
                   title=f"توتر على الحدود {n}", fetched=datetime(2025, 3, 1, tzinfo=UTC))


def delivery(n: int) -> Delivery:
    a = Alert(id=f"story-{n}", version=1, watchlist="levant", severity=Severity.CRITICAL,
              title=f"غارة {n}", created=datetime(2025, 3, 1, tzinfo=UTC), score=0.9)
    return Delivery(id=f"{a.id}:slack", alert=a, channel="slack", recipient="",
                    next_at=datetime(2025, 3, 1, tzinfo=UTC))


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts extra redis-servers (with extra arguments) and stops them after the test."""
    started: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        workdir = tmp_path / f"redis{len(started)}"
        workdir.mkdir()
        started.append(RedisServer(workdir, *extra))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def test_evicting_server_is_refused(start_redis: Callable[..., RedisServer]) -> None:
    """A server that may evict keys (allkeys-lru) is refused with the setting to change."""
    server = start_redis("--maxmemory-policy", "allkeys-lru")
    store = RedisStore(server.url)
    with pytest.raises(StoreError, match="maxmemory-policy noeviction") as info:
        await store.open()
    assert not isinstance(info.value, StoreUnavailableError)


async def test_disabled_config_warns_and_continues(start_redis: Callable[..., RedisServer]) -> None:
    """On a managed Redis with CONFIG disabled, open() warns and the store works."""
    server = start_redis("--rename-command", "CONFIG", "")
    store = RedisStore(server.url)
    with capture_logs() as logs:
        await store.open()
    try:
        assert "redis_config_unreadable" in [e["event"] for e in logs]
        assert await store.admit_articles([article(1)], retention=DAY) == [article(1)]
    finally:
        await store.close()


async def test_no_persistence_is_logged(redis_url: str) -> None:
    """A server that persists nothing (no AOF, no save points) gets a warning at open()."""
    store = RedisStore(redis_url)
    with capture_logs() as logs:
        await store.open()
    await store.close()
    assert "redis_not_persistent" in [e["event"] for e in logs]


async def test_down_at_start_is_unavailable_and_masks_password() -> None:
    """No server at start: StoreUnavailableError naming the address, never the password."""
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    store = RedisStore(url, timeout=1)
    with pytest.raises(StoreUnavailableError, match="unreachable") as info:
        await store.open()
    assert "s3cret-pw" not in str(info.value)
    assert "redis://:****@127.0.0.1" in str(info.value)
    assert mask_url("rediss://u:p@h:1/0?password=x&db=2") == "rediss://u:****@h:1/0?password=****&db=2"


async def test_wrong_password_is_a_store_error(start_redis: Callable[..., RedisServer]) -> None:
    """A refused password is reported as a configuration problem, the password masked."""
    server = start_redis("--requirepass", "right-pw")
    store = RedisStore(f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
    with pytest.raises(StoreError) as info:
        await store.open()
    assert not isinstance(info.value, StoreUnavailableError)
    assert "wrong-pw" not in str(info.value)
    good = RedisStore(f"redis://:right-pw@127.0.0.1:{server.port}/0")
    await good.open()
    await good.ping()
    await good.close()


async def test_killed_then_restarted_server(
    start_redis: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis killed mid-run: operations raise StoreUnavailableError; after a restart they work."""
    server = start_redis()
    store = RedisStore(server.url, timeout=1)
    await store.open()
    try:
        await store.admit_articles([article(1)], retention=DAY)
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(StoreUnavailableError):
            await store.admit_articles([article(2)], retention=DAY)
        with pytest.raises(StoreUnavailableError):
            await store.claim_articles("w", 5)
        monkeypatch.setattr(tests.conftest, "free_port", lambda: server.port)
        start_redis()
        # the restarted server has no data (no persistence): the group is recreated on claim
        assert await store.admit_articles([article(3)], retention=DAY) == [article(3)]
        assert [a for _, a in await store.claim_articles("w", 5)] == [article(3)]
    finally:
        await store.close()


async def test_hung_server_times_out(start_redis: Callable[..., RedisServer]) -> None:
    """A frozen server (SIGSTOP) makes operations fail within the socket timeout, then recover."""
    server = start_redis()
    store = RedisStore(server.url, timeout=0.5)
    await store.open()
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await store.admit_articles([article(1)], retention=DAY)
        assert time.monotonic() - started < 1.5
        os.kill(server.proc.pid, signal.SIGCONT)
        # the timed-out admit may or may not have run: either way a1 is queued exactly once
        await store.admit_articles([article(1)], retention=DAY)
        assert [a for _, a in await store.claim_articles("w", 5)] == [article(1)]
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        await store.close()


async def test_outbox_after_restart_without_data(
    start_redis: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarted empty mid-send: the sender's late ack is a no-op, and the outbox's
    stream and consumer group are recreated by the next outbox_due."""
    server = start_redis()
    store = RedisStore(server.url, timeout=1)
    await store.open()
    try:
        await store.outbox_put([delivery(1)])
        [sent] = await store.outbox_due(datetime.now(UTC), "r1", 5)
        assert sent.id == "story-1:slack"
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(StoreUnavailableError):
            await store.outbox_due(datetime.now(UTC), "r1", 5)
        monkeypatch.setattr(tests.conftest, "free_port", lambda: server.port)
        start_redis()
        await store.outbox_done("story-1:slack")
        await store.outbox_put([delivery(2)])
        [fresh] = await store.outbox_due(datetime.now(UTC), "r1", 5)
        assert fresh.id == "story-2:slack"
    finally:
        await store.close()
