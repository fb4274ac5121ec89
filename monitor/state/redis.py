"""The Redis back-end, shared by replicas: Lua-atomic admits, stream queues for articles and alerts.

Keys (all under the prefix, ``spillover:`` by default)::

    seen:<article id>        string with TTL = retention (SET NX PX; a new sighting slides it)
    articles                 stream of admitted articles, consumer group "spillover"
    articles:dead            stream of entries delivered MAX_DELIVERIES times without an ack
    feeds                    hash url -> FeedState JSON
    lease:<key>              string owner, PX ttl
    cooldown:<key>           string, PX ttl
    alerts / alerts:data     zset id -> created (epoch s) / hash id -> {alert, embedding} JSON
    outbox:items             hash id -> Delivery JSON as put (never rewritten)
    outbox:state             hash id -> {status, attempts, next_at ms, last_error, entry}
                             (small: Lua's cjson rewrites it safely); ``entry`` is the id's
                             one live entry in outbox:ready, "" when it has none
    outbox:due               zset of pending ids not yet handed out, scored by next attempt (ms)
    outbox:ready             stream of due deliveries (field id), consumer group "spillover":
                             the pending entries list is the lease, XAUTOCLAIM takes a dead
                             consumer's entries once idle past the lease, XACK+XDEL ends them
    outbox:dead              stream of dead-lettered deliveries (id, attempts[, deliveries],
                             error); capped at DEAD_LETTER_MAXLEN; status lives in outbox:state
    outbox:done              zset id -> done time (pruned after 7 days)

A pending id is in exactly one of outbox:due (waiting for its time) or outbox:ready (due,
handed out or about to be). Leases are measured by the Redis server's clock (entry idle
time), so replicas whose clocks disagree still never send in parallel.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from pydantic import ValidationError
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from monitor.errors import StoreError, StoreUnavailableError
from monitor.logs import mask_url
from monitor.models import Alert, Article, Delivery, DeliveryStatus, FeedState
from monitor.state import redis_scripts as lua
from monitor.state.sqlite import KEEP_ALERTS, KEEP_DONE, MAX_DELIVERIES, outbox_status

log = structlog.get_logger(__name__)

GROUP = "spillover"
DEAD_LETTER_MAXLEN = 10_000
MOVE_PER_CALL = 500  # due ids moved from the zset to the stream per outbox_due (bounds the script)
MIN_VERSION = (7, 0)  # script shebangs (OOM checked before a script runs)


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1 (Redis rejects a zero TTL)."""
    return max(1, round(seconds * 1000))


def _epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _delivery(item: str, raw_state: str) -> Delivery:
    """A Delivery from its JSON as put and its mutable state."""
    state = json.loads(raw_state)
    return Delivery.model_validate_json(item).model_copy(update={
        "status": DeliveryStatus(state["status"]),
        "attempts": int(state["attempts"]),
        "next_at": datetime.fromtimestamp(state["next_at"] / 1000, UTC),
        "last_error": state["last_error"],
    })


class RedisStore:
    """Store on Redis 7+; every replica opens one against the same server."""

    def __init__(self, url: str, *, prefix: str = "spillover:", timeout: float = 5.0) -> None:
        self.url = url
        self.where = mask_url(url)
        self.prefix = prefix
        self.timeout = timeout
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r})"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @contextmanager
    def _io(self, action: str) -> Iterator[None]:
        """Translate redis-py errors into StoreError / StoreUnavailableError, URL masked."""
        try:
            yield
        except rexc.AuthenticationError as exc:
            raise StoreError(
                f"redis at {self.where} refused the credentials while {action}: "
                "check the user and password in SPILLOVER_STATE_URL"
            ) from exc
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"redis at {self.where} is unreachable while {action}: {exc}"
            ) from exc
        except rexc.RedisError as exc:
            raise StoreError(f"redis at {self.where} failed while {action}: {exc}") from exc

    @property
    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailableError(f"redis store {self.where} is not open")
        return self._client

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._io(f"running {name.lower()}"):
            return await self._scripts[name](keys=list(keys), args=list(args))

    # lifecycle

    async def open(self) -> None:
        """Connect, refuse an evicting server, warn when nothing is persisted."""
        if self._client is not None:
            return
        client = Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry_on_timeout=False, retry=Retry(NoBackoff(), 0), decode_responses=True,
        )
        try:
            with self._io("connecting"):
                await self._check(client)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        for name in ("ADMIT", "CLAIM", "RELEASE", "OUTBOX_PUT", "OUTBOX_DUE", "OUTBOX_MOVE",
                     "LEASE_ACQUIRE", "LEASE_RELEASE", "SAVE_ALERT"):
            self._scripts[name] = client.register_script(getattr(lua, name))
        await self._migrate()
        log.info("state_opened", backend="redis", url=self.where)

    async def _check(self, client: Redis) -> None:
        await client.ping()
        version = str((await client.info("server")).get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2]) < MIN_VERSION:
            raise StoreError(f"redis at {self.where} is version {version}; Spillover needs 7.0+")
        try:
            config = await client.config_get("maxmemory-policy")
            config.update(await client.config_get("appendonly"))
            config.update(await client.config_get("save"))
        except rexc.ResponseError as exc:  # managed services often disable CONFIG
            log.warning("redis_config_unreadable", url=self.where, error=str(exc),
                        hint="make sure maxmemory-policy is noeviction")
            return
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            raise StoreError(
                f"redis at {self.where} has maxmemory-policy {policy}: it may evict seen ids, "
                "queued articles or pending alerts. Set `maxmemory-policy noeviction` "
                "(redis.conf or CONFIG SET) and start again"
            )
        if config.get("appendonly") != "yes" and not config.get("save"):
            log.warning("redis_not_persistent", url=self.where,
                        hint="enable appendonly or save points, or a restart forgets all state")

    async def _migrate(self) -> None:
        """Drop an older outbox's set of dead ids (a copy of outbox:state) from the stream's key."""
        dead = self._key("outbox", "dead")
        with self._io("checking the outbox layout"):
            if await self._redis.type(dead) == "set":
                await self._redis.delete(dead)
                log.info("outbox_dead_set_migrated", key=dead)

    async def close(self) -> None:
        """Close the connection pool; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless Redis answers."""
        with self._io("pinging"):
            await self._redis.ping()

    # seen ids and the article queue

    async def admit_articles(self, articles: Sequence[Article], retention: float) -> list[Article]:
        """Mark unseen articles seen and queue them in one script; return those admitted.

        A sighting of an already-seen id extends its retention (sliding window).
        """
        if not articles:
            return []
        keys = [self._key("articles")] + [self._key("seen", a.id) for a in articles]
        args = [_ms(retention)] + [a.model_dump_json() for a in articles]
        positions = await self._run("ADMIT", keys, args)
        return [articles[int(i)] for i in positions]

    async def is_seen(self, article_id: str) -> bool:
        """Whether the id was admitted within its retention window."""
        with self._io("reading seen ids"):
            return bool(await self._redis.exists(self._key("seen", article_id)))

    async def claim_articles(
        self, consumer: str, count: int, reclaim_after: float = 60.0
    ) -> list[tuple[str, Article]]:
        """Reclaim entries idle past ``reclaim_after``, then read new ones; one atomic script."""
        if count <= 0:
            return []
        keys = [self._key("articles"), self._key("articles", "dead")]
        args = [GROUP, consumer, _ms(reclaim_after), count, MAX_DELIVERIES, DEAD_LETTER_MAXLEN]
        entries = await self._run("CLAIM", keys, args)
        claimed = []
        for entry_id, fields in entries:
            payload = dict(zip(fields[::2], fields[1::2], strict=True)).get("article", "")
            try:
                claimed.append((str(entry_id), Article.model_validate_json(payload)))
            except ValidationError as exc:
                # left pending: re-delivered, then dead-lettered after MAX_DELIVERIES
                log.error("queue_entry_unreadable", entry=entry_id, error=str(exc))
        return claimed

    async def release_claims(self, consumer: str) -> int:
        """Make entries claimed by ``consumer`` (a previous life of it) claimable now."""
        return int(await self._run("RELEASE", [self._key("articles")], [GROUP, consumer]))

    async def ack_articles(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete processed entries in one transaction."""
        if not entry_ids:
            return
        stream = self._key("articles")
        with self._io("acknowledging articles"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, *entry_ids)
                pipe.xdel(stream, *entry_ids)
                await pipe.execute()

    async def dead_articles(self) -> list[tuple[str, Article]]:
        """Entries dead-lettered after too many deliveries, by original entry id."""
        with self._io("reading dead articles"):
            rows = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrange(self._key("articles", "dead")),
            )
        return [(f["entry"], Article.model_validate_json(f["article"])) for _, f in rows]

    async def queue_length(self) -> int:
        """Entries queued or claimed but not yet acked."""
        with self._io("reading the queue"):
            return int(await self._redis.xlen(self._key("articles")))

    # feed state

    async def load_feed_state(self, url: str) -> FeedState | None:
        """The remembered state of one feed."""
        with self._io("loading feed state"):
            raw = await self._redis.hget(self._key("feeds"), url)
        return None if raw is None else FeedState.model_validate_json(raw)

    async def save_feed_state(self, state: FeedState) -> None:
        """Replace the remembered state of one feed."""
        with self._io("saving feed state"):
            await self._redis.hset(self._key("feeds"), state.url, state.model_dump_json())

    async def all_feed_states(self) -> list[FeedState]:
        """Every remembered feed state, by URL."""
        with self._io("loading feed states"):
            raw = await self._redis.hgetall(self._key("feeds"))
        return [FeedState.model_validate_json(raw[url]) for url in sorted(raw)]

    # leases and cooldowns

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease if free, renew it if ``owner`` holds it (compare-and-set)."""
        return bool(await self._run("LEASE_ACQUIRE", [self._key("lease", key)], [owner, _ms(ttl)]))

    async def release_lease(self, key: str, owner: str) -> None:
        """Drop the lease only if ``owner`` holds it (compare-and-delete)."""
        await self._run("LEASE_RELEASE", [self._key("lease", key)], [owner])

    async def try_cooldown(self, key: str, ttl: float) -> bool:
        """Start a cooldown unless one is running (SET NX PX)."""
        with self._io("starting a cooldown"):
            return bool(await self._redis.set(self._key("cooldown", key), "1", nx=True,
                                              px=_ms(ttl)))

    # alerts (stories)

    async def save_alert(self, alert: Alert, embedding: Sequence[float]) -> None:
        """Store the latest version of an alert; forget alerts older than a week."""
        payload = json.dumps({"alert": alert.model_dump(mode="json"), "embedding": list(embedding)})
        created = _epoch_ms(alert.created) / 1000
        keys = [self._key("alerts"), self._key("alerts", "data")]
        await self._run("SAVE_ALERT", keys, [alert.id, repr(created), payload,
                                             repr(time.time() - KEEP_ALERTS)])

    async def recent_alerts(self, since: datetime) -> list[tuple[Alert, list[float]]]:
        """Alerts created at or after ``since``, newest first, with their embeddings."""
        low = repr(_epoch_ms(since) / 1000)
        with self._io("reading recent alerts"):
            ids = cast(
                list[str], await self._redis.zrevrangebyscore(self._key("alerts"), "+inf", low)
            )
            rows = await self._redis.hmget(self._key("alerts", "data"), ids) if ids else []
        found = [json.loads(r) for r in rows if r is not None]
        return [(Alert.model_validate(f["alert"]), list(f["embedding"])) for f in found]

    # the outbox

    def _outbox_keys(self, *parts: str) -> list[str]:
        return [self._key("outbox", part) for part in parts]

    async def outbox_put(self, deliveries: Sequence[Delivery]) -> int:
        """Add deliveries whose id is new (HSETNX); return how many were."""
        if not deliveries:
            return 0
        now = time.time()
        args: list[Any] = [_ms(now), _ms(now - KEEP_DONE)]
        for d in deliveries:
            state = {"status": d.status.value, "attempts": d.attempts,
                     "next_at": _epoch_ms(d.next_at), "last_error": d.last_error, "entry": ""}
            args += [d.id, d.model_dump_json(), json.dumps(state), d.status.value,
                     _epoch_ms(d.next_at)]
        keys = self._outbox_keys("items", "state", "due", "done")
        return int(await self._run("OUTBOX_PUT", keys, args))

    async def outbox_due(
        self, now: datetime, owner: str, count: int, lease: float = 60.0
    ) -> list[Delivery]:
        """Hand up to ``count`` due pending deliveries to consumer ``owner``, atomically.

        Entries another consumer has held for ``lease`` seconds without an ack are taken over;
        one handed out MAX_DELIVERIES times without an ack is dead-lettered instead.
        """
        if count <= 0:
            return []
        keys = self._outbox_keys("items", "state", "due", "ready", "dead")
        args = [GROUP, owner, _epoch_ms(now), _ms(lease), count, MAX_DELIVERIES,
                DEAD_LETTER_MAXLEN, MOVE_PER_CALL]
        flat = await self._run("OUTBOX_DUE", keys, args)
        return [_delivery(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def outbox_release(self, owner: str) -> int:
        """At start-up: make deliveries a previous life of ``owner`` held due to anyone now."""
        return int(await self._run("RELEASE", self._outbox_keys("ready"), [GROUP, owner]))

    async def _move(self, op: str, delivery_id: str, next_at: int = 0, error: str = "") -> bool:
        now = time.time()
        keys = self._outbox_keys("items", "state", "due", "ready", "dead", "done")
        args = [GROUP, op, delivery_id, _ms(now), next_at, error, _ms(now - KEEP_DONE),
                DEAD_LETTER_MAXLEN]
        return bool(await self._run("OUTBOX_MOVE", keys, args))

    async def outbox_done(self, delivery_id: str) -> None:
        """Mark sent; the id is kept a week so the same delivery is not put again."""
        await self._move("done", delivery_id)

    async def outbox_retry(self, delivery_id: str, next_at: datetime, error: str) -> None:
        """Count a failed attempt and schedule the next; a done or dead entry is left alone."""
        await self._move("retry", delivery_id, _epoch_ms(next_at), error)

    async def outbox_dead(self, delivery_id: str, error: str) -> None:
        """Count the failed attempt and dead-letter a pending delivery (done stays done)."""
        await self._move("dead", delivery_id, error=error)

    async def dead_deliveries(self) -> list[dict[str, str]]:
        """The dead-letter stream's records (id, attempts, error[, deliveries]), oldest first."""
        with self._io("reading dead deliveries"):
            rows = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrange(self._key("outbox", "dead")),
            )
        return [fields for _, fields in rows]

    async def outbox_list(self, status: str | None = None) -> list[Delivery]:
        """Deliveries by next attempt time, optionally of one status."""
        wanted = None if status is None else outbox_status(status)
        items_key, state_key = self._outbox_keys("items", "state")
        with self._io("listing the outbox"):
            states = await self._redis.hgetall(state_key)
            ids = [str(i) for i, s in states.items()
                   if wanted is None or json.loads(s)["status"] == wanted]
            items = await self._redis.hmget(items_key, ids) if ids else []
        found = [_delivery(str(item), str(states[i]))
                 for i, item in zip(ids, items, strict=True) if item]
        return sorted(found, key=lambda d: (d.next_at, d.id))

    async def outbox_requeue(self, delivery_id: str, now: datetime) -> bool:
        """Make a dead or pending delivery due at ``now`` with a fresh attempt count.

        Its live stream entry, if any, is dropped first: the id is listed once, in the zset.
        """
        return await self._move("requeue", delivery_id, _epoch_ms(now))
