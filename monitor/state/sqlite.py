"""The embedded SQLite back-end: one file, one connection on its own thread, WAL mode."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from monitor.errors import StoreError, StoreUnavailableError
from monitor.models import Alert, Article, Delivery, DeliveryStatus, FeedState

log = structlog.get_logger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
MAX_DELIVERIES = 5  # a queued article handed out this often without an ack is dead-lettered
KEEP_DONE = 7 * 86400.0  # done outbox ids are kept this long so a re-put stays a no-op
KEEP_ALERTS = 7 * 86400.0
PRUNE_EVERY = 50  # admits between sweeps of expired seen ids
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE seen (id TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX seen_expiry ON seen (expires_at);
CREATE TABLE queue (
  entry_id INTEGER PRIMARY KEY AUTOINCREMENT, article_id TEXT NOT NULL, payload TEXT NOT NULL,
  claimed_by TEXT, claimed_at REAL, deliveries INTEGER NOT NULL DEFAULT 0);
CREATE TABLE queue_dead (
  entry_id INTEGER PRIMARY KEY, article_id TEXT NOT NULL, payload TEXT NOT NULL,
  deliveries INTEGER NOT NULL, buried_at REAL NOT NULL);
CREATE TABLE feeds (url TEXT PRIMARY KEY, payload TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE cooldowns (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE alerts (
  id TEXT PRIMARY KEY, created REAL NOT NULL, payload TEXT NOT NULL, embedding TEXT NOT NULL);
CREATE INDEX alerts_created ON alerts (created);
CREATE TABLE outbox (
  id TEXT PRIMARY KEY, status TEXT NOT NULL, next_at REAL NOT NULL, lease_owner TEXT,
  lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
  done_at REAL, payload TEXT NOT NULL);
CREATE INDEX outbox_due ON outbox (status, next_at);
"""


def _ts(moment: datetime) -> float:
    """A datetime as UTC epoch seconds (naive values are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _delivery(row: sqlite3.Row) -> Delivery:
    """Rebuild a Delivery from its stored payload and its mutable columns."""
    base = Delivery.model_validate_json(row["payload"])
    return base.model_copy(update={
        "status": DeliveryStatus(row["status"]),
        "attempts": row["attempts"],
        "next_at": datetime.fromtimestamp(row["next_at"], UTC),
        "last_error": row["last_error"],
    })


def outbox_status(status: str) -> str:
    """Check an outbox status filter, naming the valid ones when it is wrong."""
    try:
        return DeliveryStatus(status).value
    except ValueError:
        valid = ", ".join(s.value for s in DeliveryStatus)
        raise StoreError(f"unknown outbox status {status!r}: use one of {valid}") from None


class SQLiteStore:
    """Store on a SQLite file; several processes may share it (writes are serialised)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._admits = 0

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # lifecycle

    async def open(self) -> None:
        """Create the file and its folder, switch to WAL, create or check the schema."""
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spillover-sqlite")
        try:
            self._conn = await self._call(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        log.info("state_opened", backend="sqlite", path=self.path)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"state file {self.path} has schema version {version}, newer than this "
                    f"Spillover understands ({SCHEMA_VERSION}): upgrade Spillover or point "
                    "SPILLOVER_STATE_URL at another file"
                )
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close the connection and its thread; safe to call twice."""
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        if executor is not None:
            executor.shutdown(wait=False)  # its one task, conn.close, has already run

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the file answers a query."""
        await self._query("SELECT 1")

    # plumbing: every statement runs on the store's own thread

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailableError(f"state file {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreUnavailableError(f"state file {self.path} is busy: {text}") from exc
            raise StoreError(f"state file {self.path}: {text}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"state file {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailableError(f"state file {self.path} is not open")
        return self._conn

    async def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._call(lambda: self._connection().execute(sql, args).fetchall())

    async def _change(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""
        return await self._write(lambda c: c.execute(sql, args).rowcount)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one IMMEDIATE transaction (other processes wait on busy_timeout)."""

        def tx() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._call(tx)

    # seen ids and the article queue

    async def admit_articles(self, articles: Sequence[Article], retention: float) -> list[Article]:
        """Mark unseen articles seen and queue them in one transaction; return those admitted.

        A sighting of an already-seen id extends its retention (sliding window), so an
        article that lingers in a feed is not processed again when its first sighting ages out.
        """
        self._admits += 1
        prune = self._admits % PRUNE_EVERY == 1
        rows = [(a, a.model_dump_json()) for a in articles]
        return await self._write(lambda c: self._admit(c, rows, retention, prune))

    def _admit(
        self, conn: sqlite3.Connection, rows: list[tuple[Article, str]], retention: float,
        prune: bool,
    ) -> list[Article]:
        now = time.time()
        if prune:
            conn.execute("DELETE FROM seen WHERE expires_at <= ?", (now,))
        admitted = []
        for article, payload in rows:
            row = conn.execute("SELECT expires_at FROM seen WHERE id = ?", (article.id,)).fetchone()
            conn.execute(
                "INSERT INTO seen (id, expires_at) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
                (article.id, now + retention),
            )
            if row is None or row[0] <= now:
                conn.execute(
                    "INSERT INTO queue (article_id, payload) VALUES (?, ?)", (article.id, payload)
                )
                admitted.append(article)
        return admitted

    async def is_seen(self, article_id: str) -> bool:
        """Whether the id was admitted within its retention window."""
        sql = "SELECT 1 FROM seen WHERE id = ? AND expires_at > ?"
        return bool(await self._query(sql, (article_id, time.time())))

    async def claim_articles(
        self, consumer: str, count: int, reclaim_after: float = 60.0
    ) -> list[tuple[str, Article]]:
        """Claim up to ``count`` entries: stale claims first, then unclaimed ones, oldest first."""
        rows = await self._write(lambda c: self._claim(c, consumer, count, reclaim_after))
        claimed = []
        for entry_id, payload in rows:
            try:
                claimed.append((str(entry_id), Article.model_validate_json(payload)))
            except ValidationError as exc:
                # left claimed: it is re-delivered, then dead-lettered after MAX_DELIVERIES
                log.error("queue_entry_unreadable", entry=entry_id, error=str(exc))
        return claimed

    def _claim(
        self, conn: sqlite3.Connection, consumer: str, count: int, reclaim_after: float
    ) -> list[tuple[int, str]]:
        now = time.time()
        stale = now - reclaim_after
        conn.execute(
            "INSERT INTO queue_dead (entry_id, article_id, payload, deliveries, buried_at) "
            "SELECT entry_id, article_id, payload, deliveries, ? FROM queue "
            "WHERE claimed_at <= ? AND deliveries >= ?", (now, stale, MAX_DELIVERIES),
        )
        buried = conn.execute(
            "DELETE FROM queue WHERE claimed_at <= ? AND deliveries >= ?", (stale, MAX_DELIVERIES)
        ).rowcount
        if buried:
            log.warning("queue_entries_dead_lettered", count=buried, max_deliveries=MAX_DELIVERIES)
        rows = conn.execute(
            "SELECT entry_id, payload FROM queue WHERE claimed_at IS NULL OR claimed_at <= ? "
            "ORDER BY claimed_at IS NULL, entry_id LIMIT ?", (stale, count),
        ).fetchall()
        conn.executemany(
            "UPDATE queue SET claimed_by = ?, claimed_at = ?, deliveries = deliveries + 1 "
            "WHERE entry_id = ?", [(consumer, now, r[0]) for r in rows],
        )
        return [(r[0], r[1]) for r in rows]

    async def release_claims(self, consumer: str) -> int:
        """Make entries claimed by ``consumer`` (a previous life of it) claimable now."""
        return await self._write(lambda c: c.execute(
            "UPDATE queue SET claimed_at = 0 WHERE claimed_by = ? AND claimed_at IS NOT NULL",
            (consumer,)).rowcount)

    async def ack_articles(self, entry_ids: Sequence[str]) -> None:
        """Delete processed entries; unknown ids are ignored."""
        ids = [(int(e),) for e in entry_ids if e.isdigit()]
        await self._write(lambda c: c.executemany("DELETE FROM queue WHERE entry_id = ?", ids))

    async def dead_articles(self) -> list[tuple[str, Article]]:
        """Queue entries dead-lettered after too many deliveries without an ack."""
        rows = await self._query("SELECT entry_id, payload FROM queue_dead ORDER BY entry_id")
        return [(str(r[0]), Article.model_validate_json(r[1])) for r in rows]

    async def queue_length(self) -> int:
        """Entries queued or claimed but not yet acked."""
        return int((await self._query("SELECT count(*) FROM queue"))[0][0])

    # feed state

    async def load_feed_state(self, url: str) -> FeedState | None:
        """The remembered state of one feed."""
        rows = await self._query("SELECT payload FROM feeds WHERE url = ?", (url,))
        return FeedState.model_validate_json(rows[0][0]) if rows else None

    async def save_feed_state(self, state: FeedState) -> None:
        """Replace the remembered state of one feed."""
        sql = "INSERT OR REPLACE INTO feeds (url, payload) VALUES (?, ?)"
        await self._change(sql, (state.url, state.model_dump_json()))

    async def all_feed_states(self) -> list[FeedState]:
        """Every remembered feed state, by URL."""
        rows = await self._query("SELECT payload FROM feeds ORDER BY url")
        return [FeedState.model_validate_json(r[0]) for r in rows]

    # leases and cooldowns (wall clock, so separate processes agree)

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease if free or expired, renew it if ``owner`` holds it."""
        now = time.time()
        return await self._change(
            "INSERT INTO leases (key, owner, until) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET owner = excluded.owner, until = excluded.until "
            "WHERE leases.owner = excluded.owner OR leases.until <= ?",
            (key, owner, now + ttl, now),
        ) == 1

    async def release_lease(self, key: str, owner: str) -> None:
        """Drop the lease only if ``owner`` holds it."""
        await self._change("DELETE FROM leases WHERE key = ? AND owner = ?", (key, owner))

    async def try_cooldown(self, key: str, ttl: float) -> bool:
        """Start a cooldown unless one is running."""
        now = time.time()
        return await self._change(
            "INSERT INTO cooldowns (key, until) VALUES (?, ?) ON CONFLICT (key) "
            "DO UPDATE SET until = excluded.until WHERE cooldowns.until <= ?",
            (key, now + ttl, now),
        ) == 1

    # alerts (stories)

    async def save_alert(self, alert: Alert, embedding: Sequence[float]) -> None:
        """Store the latest version of an alert; forget alerts older than a week."""
        args = (alert.id, _ts(alert.created), alert.model_dump_json(), json.dumps(list(embedding)))

        def save(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM alerts WHERE created < ?", (time.time() - KEEP_ALERTS,))
            conn.execute(
                "INSERT OR REPLACE INTO alerts (id, created, payload, embedding) "
                "VALUES (?, ?, ?, ?)", args,
            )

        await self._write(save)

    async def recent_alerts(self, since: datetime) -> list[tuple[Alert, list[float]]]:
        """Alerts created at or after ``since``, newest first, with their embeddings."""
        rows = await self._query(
            "SELECT payload, embedding FROM alerts WHERE created >= ? ORDER BY created DESC",
            (_ts(since),),
        )
        return [(Alert.model_validate_json(r[0]), json.loads(r[1])) for r in rows]

    # the outbox

    async def outbox_put(self, deliveries: Sequence[Delivery]) -> int:
        """Insert deliveries whose id is new; return how many were."""
        rows = [
            (d.id, d.status.value, _ts(d.next_at), d.attempts, d.last_error, d.model_dump_json())
            for d in deliveries
        ]

        def put(conn: sqlite3.Connection) -> int:
            conn.execute(
                "DELETE FROM outbox WHERE status = 'done' AND done_at < ?",
                (time.time() - KEEP_DONE,),
            )
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, status, next_at, attempts, last_error, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows,
            )
            return conn.total_changes - before

        return await self._write(put)

    async def outbox_due(
        self, now: datetime, owner: str, count: int, lease: float = 60.0
    ) -> list[Delivery]:
        """Lease up to ``count`` due pending deliveries whose lease is free or expired."""
        at = _ts(now)

        def take(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = conn.execute(
                "SELECT * FROM outbox WHERE status = 'pending' AND next_at <= ? "
                "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_at LIMIT ?",
                (at, at, count),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                [(owner, at + lease, r["id"]) for r in rows],
            )
            return rows

        return [_delivery(r) for r in await self._write(take)]

    async def outbox_done(self, delivery_id: str) -> None:
        """Mark sent; the row stays a week so the same id is not put again."""
        await self._change(
            "UPDATE outbox SET status = 'done', done_at = ?, lease_owner = NULL, "
            "lease_until = NULL WHERE id = ?", (time.time(), delivery_id),
        )

    async def outbox_retry(self, delivery_id: str, next_at: datetime, error: str) -> None:
        """Count a failed attempt and schedule the next; a done or dead entry is left alone."""
        await self._change(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, "
            "lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = 'pending'",
            (_ts(next_at), error, delivery_id),
        )

    async def outbox_release(self, owner: str) -> int:
        """Free the leases a previous life of ``owner`` held; return how many."""
        return await self._change(
            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL "
            "WHERE lease_owner = ? AND status = 'pending'", (owner,),
        )

    async def outbox_dead(self, delivery_id: str, error: str) -> None:
        """Count the failed attempt and dead-letter a pending delivery (done stays done)."""
        await self._change(
            "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?, "
            "lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = 'pending'",
            (error, delivery_id),
        )

    async def outbox_list(self, status: str | None = None) -> list[Delivery]:
        """Deliveries by next attempt time, optionally of one status."""
        args: tuple[str, ...] = ()
        if status is None:
            sql = "SELECT * FROM outbox ORDER BY next_at, id"
        else:
            sql = "SELECT * FROM outbox WHERE status = ? ORDER BY next_at, id"
            args = (outbox_status(status),)
        return [_delivery(r) for r in await self._query(sql, args)]

    async def outbox_requeue(self, delivery_id: str, now: datetime) -> bool:
        """Make a dead or pending delivery due now with a fresh attempt count."""
        return await self._change(
            "UPDATE outbox SET status = 'pending', next_at = ?, attempts = 0, lease_owner = NULL,"
            " lease_until = NULL WHERE id = ? AND status != 'done'", (_ts(now), delivery_id),
        ) == 1
