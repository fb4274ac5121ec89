"""One contract suite run on both back-ends: SQLite on a temp file and a real redis-server."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import StoreError
from monitor.models import Alert, Article, Delivery, DeliveryStatus, FeedState, Severity
from monitor.state.sqlite import MAX_DELIVERIES, SQLiteStore
from tests.state.conftest import AnyStore, StoreFactory

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0


def article(n: int, feed: str = "reuters") -> Article:
    return Article(
        id=f"https://example.org/{feed}/{n}", feed=feed, feed_url=f"https://example.org/{feed}.xml",
        title=f"اشتباكات على الحدود {n} — border clashes", summary="قصف مدفعي / shelling",
        link=f"https://example.org/{feed}/{n}", published=NOW, lang="ar",
    )


def alert(story: str, created: datetime, version: int = 1) -> Alert:
    return Alert(id=story, version=version, watchlist="levant", severity=Severity.WARNING,
                 title=f"غارة جوية {story}", created=created, score=0.8123456789012345)


def delivery(n: int, next_at: datetime = NOW, channel: str = "email") -> Delivery:
    a = alert(f"story-{n}", NOW)
    return Delivery(id=Delivery.key(a, channel, "desk@example.org"), alert=a, channel=channel,
                    recipient="desk@example.org", next_at=next_at)


# seen ids and admission


async def test_admit_returns_only_unseen(store: AnyStore) -> None:
    """An article seen in two admits (or twice in one batch) is admitted once."""
    a, b, c = article(1), article(2), article(3)
    assert await store.admit_articles([a, b], retention=DAY) == [a, b]
    assert await store.admit_articles([b, c, c], retention=DAY) == [c]
    assert await store.is_seen(b.id)
    assert not await store.is_seen(article(4).id)
    assert await store.admit_articles([], retention=DAY) == []


async def test_seen_and_queue_survive_restart(make_store: StoreFactory) -> None:
    """After close and reopen nothing is admitted again and the queue still holds its entries."""
    first = await make_store()
    articles = [article(n) for n in range(3)]
    await first.admit_articles(articles, retention=DAY)
    await first.close()
    second = await make_store()
    assert await second.admit_articles(articles, retention=DAY) == []
    claimed = await second.claim_articles("worker", 10)
    assert [a for _, a in claimed] == articles


async def test_seen_ids_expire_after_retention(store: AnyStore) -> None:
    """Past its retention an id is no longer seen and is admitted again."""
    a = article(1)
    await store.admit_articles([a], retention=0.3)
    await asyncio.sleep(0.45)
    assert not await store.is_seen(a.id)
    assert await store.admit_articles([a], retention=0.3) == [a]


async def test_new_sighting_extends_retention(store: AnyStore) -> None:
    """An article still in its feed stays seen: each sighting restarts its retention."""
    a = article(1)
    await store.admit_articles([a], retention=0.5)
    await asyncio.sleep(0.3)
    assert await store.admit_articles([a], retention=0.5) == []
    await asyncio.sleep(0.3)
    assert await store.is_seen(a.id)


# the article queue


async def test_claim_in_order_then_ack(store: AnyStore) -> None:
    """Entries are claimed oldest first, each once, with the article intact; acked ones are gone."""
    articles = [article(n) for n in range(5)]
    await store.admit_articles(articles, retention=DAY)
    first = await store.claim_articles("w1", 3)
    second = await store.claim_articles("w1", 3)
    assert [a for _, a in first + second] == articles
    assert await store.claim_articles("w1", 3) == []
    await store.ack_articles([entry for entry, _ in first + second])
    assert await store.queue_length() == 0
    assert await store.claim_articles("w2", 10, reclaim_after=0) == []


async def test_stale_claims_are_reclaimed_by_another_consumer(store: AnyStore) -> None:
    """Entries claimed by a consumer that went silent move to another after reclaim_after."""
    await store.admit_articles([article(n) for n in range(3)], retention=DAY)
    dead_worker = await store.claim_articles("w1", 2)
    assert [a.id for _, a in await store.claim_articles("w2", 5, reclaim_after=60)] == [
        article(2).id
    ]
    await asyncio.sleep(0.3)
    reclaimed = await store.claim_articles("w2", 5, reclaim_after=0.2)
    assert sorted(a.id for _, a in reclaimed) == sorted(
        a.id for _, a in [*dead_worker, ("", article(2))]
    )
    await store.ack_articles([entry for entry, _ in reclaimed])
    assert await store.queue_length() == 0


async def test_entry_dead_lettered_after_max_deliveries(store: AnyStore) -> None:
    """An entry handed out MAX_DELIVERIES times without an ack goes to the dead letters."""
    a = article(1)
    await store.admit_articles([a], retention=DAY)
    for _ in range(MAX_DELIVERIES):
        await asyncio.sleep(0.01)
        assert [x for _, x in await store.claim_articles("w", 1, reclaim_after=0)] == [a]
    await asyncio.sleep(0.01)
    assert await store.claim_articles("w", 1, reclaim_after=0) == []
    assert [x for _, x in await store.dead_articles()] == [a]
    assert await store.queue_length() == 0


async def test_two_replicas_admit_each_article_once(make_store: StoreFactory) -> None:
    """Two replicas admitting the same 200 articles concurrently admit each exactly once."""
    one, two = await make_store(), await make_store()
    articles = [article(n, feed=f"f{n % 7}") for n in range(200)]

    async def replica(store: AnyStore, seed: int) -> list[Article]:
        order = articles[:]
        random.Random(seed).shuffle(order)
        admitted = []
        for i in range(0, 200, 50):
            admitted += await store.admit_articles(order[i:i + 50], retention=DAY)
        return admitted

    got = await asyncio.gather(replica(one, 1), replica(two, 2))
    ids = [a.id for batch in got for a in batch]
    assert len(ids) == 200
    assert set(ids) == {a.id for a in articles}
    assert await one.queue_length() == 200


async def test_two_consumers_never_get_the_same_entry(make_store: StoreFactory) -> None:
    """Two consumers claiming concurrently from one queue split it with no overlap."""
    one, two = await make_store(), await make_store()
    await one.admit_articles([article(n) for n in range(120)], retention=DAY)

    async def consume(store: AnyStore, name: str) -> list[str]:
        ids: list[str] = []
        for _ in range(100):
            if not (batch := await store.claim_articles(name, 7)):
                break
            ids += [a.id for _, a in batch]
            await asyncio.sleep(0)
        return ids

    a, b = await asyncio.gather(consume(one, "c1"), consume(two, "c2"))
    assert not set(a) & set(b)
    assert len(a) + len(b) == 120
    assert len(set(a) | set(b)) == 120


# feed state


async def test_feed_state_round_trip(store: AnyStore) -> None:
    """A saved feed state loads back equal, replaces the previous one, and is listed by URL."""
    assert await store.load_feed_state("https://example.org/a.xml") is None
    first = FeedState(url="https://example.org/b.xml", etag='W/"x"', failures=2,
                      next_poll=NOW, last_error="خطأ في الاتصال")
    await store.save_feed_state(first)
    updated = first.model_copy(update={"failures": 0, "last_ok": NOW})
    await store.save_feed_state(updated)
    await store.save_feed_state(FeedState(url="https://example.org/a.xml"))
    assert await store.load_feed_state(first.url) == updated
    assert [s.url for s in await store.all_feed_states()] == [
        "https://example.org/a.xml", "https://example.org/b.xml"
    ]


# leases and cooldowns


async def test_lease_is_exclusive_and_only_the_owner_releases(store: AnyStore) -> None:
    """A held lease refuses others, renews for its owner, and ignores others' releases."""
    assert await store.acquire_lease("feed:a", "r1", ttl=30)
    assert not await store.acquire_lease("feed:a", "r2", ttl=30)
    assert await store.acquire_lease("feed:a", "r1", ttl=30)
    await store.release_lease("feed:a", "r2")
    assert not await store.acquire_lease("feed:a", "r2", ttl=30)
    assert await store.acquire_lease("feed:b", "r2", ttl=30)
    await store.release_lease("feed:a", "r1")
    assert await store.acquire_lease("feed:a", "r2", ttl=30)


async def test_lease_expires(store: AnyStore) -> None:
    """A lease its owner stopped renewing can be taken by another owner after its ttl."""
    assert await store.acquire_lease("feed:a", "r1", ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.acquire_lease("feed:a", "r2", ttl=30)
    assert not await store.acquire_lease("feed:a", "r1", ttl=30)


async def test_cooldown_runs_for_its_ttl(store: AnyStore) -> None:
    """A cooldown refuses a second start until its ttl has passed; keys are independent."""
    assert await store.try_cooldown("story-1:email", ttl=0.2)
    assert not await store.try_cooldown("story-1:email", ttl=0.2)
    assert await store.try_cooldown("story-2:email", ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.try_cooldown("story-1:email", ttl=0.2)


# alerts


async def test_recent_alerts_newest_first_with_embeddings(store: AnyStore) -> None:
    """Alerts since a time come back newest first, latest version only, embeddings exact."""
    now = datetime.now(UTC)
    for hours, story in ((3, "old"), (2, "mid"), (1, "new")):
        await store.save_alert(alert(story, now - timedelta(hours=hours)), [0.1, -0.25, 1 / 3])
    await store.save_alert(alert("mid", now - timedelta(hours=2), version=2), [0.5, 0.5, 0.5])
    recent = await store.recent_alerts(now - timedelta(minutes=150))
    assert [(a.id, a.version) for a, _ in recent] == [("new", 1), ("mid", 2)]
    assert recent[0][1] == [0.1, -0.25, 1 / 3]
    assert recent[0][0] == alert("new", now - timedelta(hours=1))
    assert [a.id for a, _ in await store.recent_alerts(now - timedelta(days=1))] == [
        "new", "mid", "old"
    ]


# the outbox


async def test_outbox_put_is_idempotent(store: AnyStore) -> None:
    """Putting an id already present keeps the first entry and counts only new ids."""
    d1, d2 = delivery(1), delivery(2)
    assert await store.outbox_put([d1, d2]) == 2
    changed = d1.model_copy(update={"channel": "slack"})
    assert await store.outbox_put([changed, delivery(3)]) == 1
    listed = {d.id: d for d in await store.outbox_list()}
    assert listed[d1.id] == d1
    assert len(listed) == 3


async def test_outbox_due_leases_each_delivery_to_one_owner(store: AnyStore) -> None:
    """Due deliveries are leased to one owner; others get them only once the lease (real
    seconds, the same for every caller) has run out, and a future delivery is not handed out."""
    now = datetime.now(UTC)
    due = [delivery(n) for n in range(4)]
    later = delivery(9, next_at=now + timedelta(minutes=5))
    await store.outbox_put([*due, later])
    got = await store.outbox_due(now, "r1", count=10, lease=0.3)
    assert sorted(d.id for d in got) == sorted(d.id for d in due)
    assert await store.outbox_due(now, "r2", count=10, lease=0.3) == []
    await asyncio.sleep(0.4)
    after = await store.outbox_due(datetime.now(UTC), "r2", count=10, lease=0.3)
    assert sorted(d.id for d in after) == sorted(d.id for d in due)
    assert await store.outbox_due(datetime.now(UTC), "r1", count=10, lease=0.3) == []


async def test_outbox_release_frees_a_restarted_owners_leases(store: AnyStore) -> None:
    """After outbox_release a restarted owner's leased deliveries are due to anyone at once,
    while another owner's leases stay untouched."""
    await store.outbox_put([delivery(n) for n in range(3)])
    mine = await store.outbox_due(NOW, "r1", count=2)
    theirs = await store.outbox_due(NOW, "r2", count=1)
    assert await store.outbox_release("r1") == 2
    again = await store.outbox_due(NOW, "r3", count=5)
    assert sorted(d.id for d in again) == sorted(d.id for d in mine)
    assert not {d.id for d in theirs} & {d.id for d in again}


async def test_outbox_due_concurrent_owners_never_overlap(make_store: StoreFactory) -> None:
    """Two replicas leasing from one outbox at the same time never get the same delivery."""
    one, two = await make_store(), await make_store()
    await one.outbox_put([delivery(n) for n in range(60)])

    async def drain(store: AnyStore, owner: str) -> list[str]:
        ids: list[str] = []
        for _ in range(100):  # bounded: a broken lease would hand out the same ids forever
            if not (batch := await store.outbox_due(NOW, owner, count=4)):
                break
            ids += [d.id for d in batch]
        return ids

    a, b = await asyncio.gather(drain(one, "r1"), drain(two, "r2"))
    assert not set(a) & set(b)
    assert len(set(a) | set(b)) == 60


async def test_outbox_retry_counts_and_reschedules(store: AnyStore) -> None:
    """A retried delivery has one more attempt, its error, and is due only at next_at."""
    d = delivery(1)
    await store.outbox_put([d])
    await store.outbox_due(NOW, "r1", count=1)
    await store.outbox_retry(d.id, NOW + timedelta(seconds=30), "SMTP 451 حاول لاحقا")
    assert await store.outbox_due(NOW + timedelta(seconds=29), "r1", count=1) == []
    [again] = await store.outbox_due(NOW + timedelta(seconds=30), "r2", count=1)
    assert (again.attempts, again.last_error) == (1, "SMTP 451 حاول لاحقا")
    assert again.next_at == NOW + timedelta(seconds=30)
    assert again.alert == d.alert


async def test_outbox_dead_letter_and_requeue(store: AnyStore) -> None:
    """A dead delivery is never due until requeued, then it is due at once with fresh attempts."""
    d = delivery(1)
    await store.outbox_put([d])
    await store.outbox_retry(d.id, NOW, "timeout")
    await store.outbox_dead(d.id, "550 no such user")
    await store.outbox_dead(d.id, "dead twice")
    [dead] = await store.outbox_list("dead")
    assert (dead.id, dead.status) == (d.id, DeliveryStatus.DEAD)
    assert (dead.attempts, dead.last_error) == (2, "550 no such user")
    assert await store.outbox_due(NOW + timedelta(days=1), "r1", count=5) == []
    later = NOW + timedelta(hours=1)
    assert await store.outbox_requeue(d.id, later)
    assert not await store.outbox_requeue("no-such-id", later)
    [back] = await store.outbox_due(later, "r1", count=5)
    assert (back.status, back.attempts, back.next_at) == (DeliveryStatus.PENDING, 0, later)


async def test_outbox_dead_counts_the_failed_attempt(store: AnyStore) -> None:
    """The attempt that made a delivery dead counts, as a retried one does: one failed
    attempt is one attempt, two are two."""
    first, second = delivery(1), delivery(2)
    await store.outbox_put([first, second])
    await store.outbox_due(NOW, "r1", count=2)
    await store.outbox_dead(first.id, "550 no such user")
    await store.outbox_retry(second.id, NOW, "451 try later")
    await store.outbox_due(NOW, "r1", count=2)
    await store.outbox_dead(second.id, "gave up after 2 attempts: 451 try later")
    attempts = {d.id: d.attempts for d in await store.outbox_list("dead")}
    assert attempts == {first.id: 1, second.id: 2}


async def test_outbox_done_is_final(store: AnyStore) -> None:
    """A done delivery is not due, not re-put, not retried, dead-lettered or requeued."""
    d = delivery(1)
    await store.outbox_put([d])
    await store.outbox_due(NOW, "r1", count=1)
    await store.outbox_done(d.id)
    assert await store.outbox_put([d]) == 0
    await store.outbox_retry(d.id, NOW, "late failure")
    await store.outbox_dead(d.id, "late failure")
    assert not await store.outbox_requeue(d.id, NOW)
    assert await store.outbox_due(NOW + timedelta(days=1), "r2", count=5) == []
    [done] = await store.outbox_list("done")
    assert (done.status, done.attempts, done.last_error) == (DeliveryStatus.DONE, 0, "")


async def test_outbox_list_by_status(store: AnyStore) -> None:
    """Listing filters by status, orders by next attempt, and names the valid statuses."""
    ds = [delivery(n, next_at=NOW + timedelta(minutes=n)) for n in range(4)]
    await store.outbox_put(list(reversed(ds)))
    await store.outbox_done(ds[1].id)
    await store.outbox_dead(ds[2].id, "bad")
    assert [d.id for d in await store.outbox_list("pending")] == [ds[0].id, ds[3].id]
    assert [d.id for d in await store.outbox_list("done")] == [ds[1].id]
    assert [d.id for d in await store.outbox_list("dead")] == [ds[2].id]
    assert [d.id for d in await store.outbox_list()] == [d.id for d in ds]
    with pytest.raises(StoreError, match="pending, done, dead"):
        await store.outbox_list("sent")


# lifecycle


async def test_ping_and_double_close(store: AnyStore) -> None:
    """An open store answers ping; close may be called twice."""
    await store.ping()
    await store.close()
    await store.close()


async def test_sqlite_refuses_a_newer_schema(tmp_path: object) -> None:
    """A state file written by a newer schema is refused with advice, not silently misread."""
    import sqlite3
    from pathlib import Path

    path = Path(str(tmp_path)) / "state.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer than this Spillover"):
        await SQLiteStore(path).open()


async def test_release_claims_gives_a_restarted_consumer_its_work_back(store: AnyStore) -> None:
    """Entries a consumer claimed before dying are claimable at once after release_claims,
    while another consumer's live claims stay untouched."""
    await store.admit_articles([article(n) for n in range(4)], retention=DAY)
    mine = await store.claim_articles("w1", 2)
    theirs = await store.claim_articles("w2", 1)
    assert await store.release_claims("w1") == 2
    again = await store.claim_articles("w1", 5, reclaim_after=60)
    assert sorted(a.id for _, a in again) == sorted(
        [a.id for _, a in mine] + [article(3).id])
    assert not {a.id for _, a in theirs} & {a.id for _, a in again}
