"""The Redis outbox on streams: a due zset, a ready stream read by a group, a dead-letter stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from monitor.models import Alert, Delivery, DeliveryStatus, Severity
from monitor.state.redis import GROUP, MOVE_PER_CALL, RedisStore
from monitor.state.sqlite import MAX_DELIVERIES

pytestmark = pytest.mark.redis

READY, DUE, DEAD, STATE = (f"spillover:outbox:{k}" for k in ("ready", "due", "dead", "state"))


PAST = datetime(2025, 3, 1, tzinfo=UTC)


def delivery(n: int, next_at: datetime = PAST) -> Delivery:
    a = Alert(id=f"story-{n}", version=1, watchlist="levant", severity=Severity.WARNING,
              title=f"قصف قرب الحدود {n}", created=PAST, score=0.9)
    return Delivery(id=Delivery.key(a, "email", "desk@example.org"), alert=a, channel="email",
                    recipient="desk@example.org", next_at=next_at)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client on the flushed server, to look at the keys the store writes."""
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """One opened Redis store."""
    opened = RedisStore(redis_url)
    await opened.open()
    yield opened
    await opened.close()


async def pending(raw: Redis) -> list[dict[str, Any]]:
    """The ready stream's pending entries: message_id, consumer, times_delivered."""
    return list(await raw.xpending_range(READY, GROUP, "-", "+", 100))


async def entry_of(raw: Redis, delivery_id: str) -> str:
    """The stream entry id the delivery's state records ("" for none)."""
    return str(json.loads(cast(str, await raw.hget(STATE, delivery_id)))["entry"])


async def entries(raw: Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """A stream's entries as (entry id, fields), oldest first."""
    return cast(list[tuple[str, dict[str, str]]], await raw.xrange(key))


def now() -> datetime:
    return datetime.now(UTC)


async def test_due_delivery_is_a_pending_stream_entry_of_its_owner(
    store: RedisStore, raw: Redis
) -> None:
    """outbox_due moves a due id from the zset into the ready stream, read by the owner: the
    entry is pending for that consumer and recorded in the delivery's state."""
    d = delivery(1)
    await store.outbox_put([d])
    assert await raw.zscore(DUE, d.id) is not None
    assert [x.id for x in await store.outbox_due(now(), "r1", count=5)] == [d.id]
    assert await raw.zscore(DUE, d.id) is None
    [entry] = await entries(raw, READY)
    assert entry[1] == {"id": d.id}
    [p] = await pending(raw)
    assert (p["message_id"], p["consumer"], p["times_delivered"]) == (entry[0], "r1", 1)
    assert await entry_of(raw, d.id) == entry[0]


async def test_future_delivery_waits_in_the_zset_until_due(store: RedisStore, raw: Redis) -> None:
    """A delivery due later stays in the zset (nothing in the stream) until ``now`` reaches it."""
    at = now() + timedelta(minutes=10)
    d = delivery(1, next_at=at)
    await store.outbox_put([d])
    assert await store.outbox_due(at - timedelta(seconds=1), "r1", count=5) == []
    assert await raw.zscore(DUE, d.id) == round(at.timestamp() * 1000)
    assert await raw.xlen(READY) == 0
    assert [x.id for x in await store.outbox_due(at, "r1", count=5)] == [d.id]
    assert await raw.zcard(DUE) == 0 and await raw.xlen(READY) == 1


async def test_second_consumer_takes_over_only_after_the_lease(
    store: RedisStore, raw: Redis
) -> None:
    """While r1's lease runs r2 gets nothing; once the entry is idle past the lease, r2
    XAUTOCLAIMs it (same entry, delivered twice)."""
    d = delivery(1)
    await store.outbox_put([d])
    await store.outbox_due(now(), "r1", count=5, lease=0.2)
    assert await store.outbox_due(now(), "r2", count=5, lease=0.2) == []
    await asyncio.sleep(0.3)
    assert [x.id for x in await store.outbox_due(now(), "r2", count=5, lease=0.2)] == [d.id]
    [p] = await pending(raw)
    assert (p["consumer"], p["times_delivered"]) == ("r2", 2)
    assert p["message_id"] == await entry_of(raw, d.id)
    assert await raw.xlen(READY) == 1


async def test_unacked_max_times_goes_to_the_dead_letter_stream(
    store: RedisStore, raw: Redis
) -> None:
    """A delivery handed out MAX_DELIVERIES times without an ack (its sender crashing each
    time) is dead-lettered instead of handed out again: dead stream record, status dead."""
    d = delivery(1)
    await store.outbox_put([d])
    for n in range(MAX_DELIVERIES):
        assert [x.id for x in await store.outbox_due(now(), f"r{n}", count=5, lease=0.05)] \
            == [d.id]
        await asyncio.sleep(0.08)
    assert await store.outbox_due(now(), "last", count=5, lease=0.05) == []
    [(_, record)] = await entries(raw, DEAD)
    assert record["id"] == d.id and record["deliveries"] == str(MAX_DELIVERIES)
    assert record["error"] == (f"delivered {MAX_DELIVERIES} times without an ack "
                               "(sender crashed each time?)")
    [dead] = await store.outbox_list("dead")
    assert (dead.id, dead.attempts, dead.last_error) == (d.id, MAX_DELIVERIES, record["error"])
    assert await raw.xlen(READY) == 0 and await pending(raw) == []
    assert await store.dead_deliveries() == [record]


async def test_done_retry_and_dead_ack_and_delete_the_entry(
    store: RedisStore, raw: Redis
) -> None:
    """done, retry and dead each XACK and XDEL the delivery's entry; retry puts the id back in
    the zset at next_at and dead writes a dead-letter record counting the failed attempt."""
    ds = [delivery(n) for n in range(3)]
    await store.outbox_put(ds)
    await store.outbox_due(now(), "r1", count=5)
    assert await raw.xlen(READY) == 3 and len(await pending(raw)) == 3
    retry_at = now() + timedelta(minutes=5)
    await store.outbox_done(ds[0].id)
    await store.outbox_retry(ds[1].id, retry_at, "451 try later")
    await store.outbox_dead(ds[2].id, "550 no such user")
    assert await raw.xlen(READY) == 0 and await pending(raw) == []
    assert await raw.zrange(DUE, 0, -1, withscores=True) == [
        (ds[1].id, round(retry_at.timestamp() * 1000))]
    [(_, record)] = await entries(raw, DEAD)
    assert record == {"id": ds[2].id, "attempts": "1", "error": "550 no such user"}
    assert [await entry_of(raw, d.id) for d in ds] == ["", "", ""]


async def test_requeue_never_leaves_two_live_entries(store: RedisStore, raw: Redis) -> None:
    """Requeueing a delivery that is out with a sender drops its entry: the next outbox_due
    hands out one new entry, and the old sender's late ack does not disturb it."""
    d = delivery(1)
    await store.outbox_put([d])
    await store.outbox_due(now(), "r1", count=5)
    assert await store.outbox_requeue(d.id, now())
    assert await store.outbox_requeue(d.id, now())  # twice: still one listing
    assert await raw.xlen(READY) == 0 and await raw.zcard(DUE) == 1
    [again] = await store.outbox_due(now(), "r2", count=5)
    assert again.id == d.id and await raw.xlen(READY) == 1
    assert await store.outbox_due(now(), "r3", count=5) == []
    await store.outbox_done(d.id)
    assert await raw.xlen(READY) == 0 and await pending(raw) == []
    [done] = await store.outbox_list("done")
    assert done.status is DeliveryStatus.DONE


async def test_stale_duplicate_entry_is_acked_and_dropped(store: RedisStore, raw: Redis) -> None:
    """A stream entry that is not its id's recorded entry (a duplicate, or for a delivery
    already done) is acknowledged and deleted, never handed out."""
    live, finished = delivery(1), delivery(2)
    await store.outbox_put([live, finished])
    await store.outbox_due(now(), "r1", count=5)
    await store.outbox_done(finished.id)
    await raw.xadd(READY, {"id": live.id})
    await raw.xadd(READY, {"id": finished.id})
    await raw.xadd(READY, {"id": "never-put"})
    assert await store.outbox_due(now(), "r2", count=5) == []
    assert await raw.xlen(READY) == 1
    [p] = await pending(raw)
    assert (p["consumer"], p["message_id"]) == ("r1", await entry_of(raw, live.id))


async def test_old_dead_set_is_migrated_at_open(redis_url: str, raw: Redis) -> None:
    """The set of dead ids an older outbox kept under outbox:dead is dropped at open, so
    dead-lettering can write the stream there."""
    await raw.sadd(DEAD, "old-id")
    store = RedisStore(redis_url)
    await store.open()
    try:
        assert await raw.exists(DEAD) == 0
        d = delivery(1)
        await store.outbox_put([d])
        await store.outbox_dead(d.id, "550")
        assert await raw.type(DEAD) == "stream"
    finally:
        await store.close()


async def test_moves_are_bounded_per_call_and_lose_nothing(store: RedisStore, raw: Redis) -> None:
    """With more ids due than one call moves, the rest wait in the zset; repeated calls hand
    every delivery out exactly once."""
    ds = [delivery(n) for n in range(MOVE_PER_CALL + 40)]
    await store.outbox_put(ds)
    handed = [d.id for d in await store.outbox_due(now(), "r1", count=100)]
    assert await raw.zcard(DUE) == 40
    assert await raw.xlen(READY) == MOVE_PER_CALL
    while batch := await store.outbox_due(now(), "r1", count=100):
        handed += [d.id for d in batch]
    assert sorted(handed) == sorted(d.id for d in ds)
    assert await raw.zcard(DUE) == 0
