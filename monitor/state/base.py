"""The Store protocol: everything Spillover keeps between polls, restarts and replicas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from monitor.models import Alert, Article, Delivery, FeedState


class Store(Protocol):
    """State shared by every stage (and, on Redis, by every replica).

    Contract (both back-ends, one test suite):
    - ``admit_articles`` marks ids seen and enqueues the unseen ones atomically:
      a crash can never leave an article seen but not queued, or queued twice.
    - queue entries stay pending until acked; ``claim_articles`` re-delivers entries
      claimed by a consumer that has been silent for ``reclaim_after`` seconds.
    - the outbox is keyed by ``Delivery.id`` (idempotency key): putting the same id
      twice keeps one entry; ``outbox_due`` returns due PENDING entries and leases
      them to the caller for ``lease`` seconds so replicas never send in parallel.
      ``now`` decides what is due; the lease runs in real seconds (on Redis, by the
      server's clock, so replicas with skewed clocks still agree).
    - a failed attempt counts once, whether ``outbox_retry`` reschedules it or
      ``outbox_dead`` gives up on it.
    - seen ids expire after the retention window given to ``admit_articles``.
    """

    async def open(self) -> None:
        """Connect, create schema, and check the back-end is safe to use."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailableError if the back-end cannot be reached."""
        ...

    # seen ids and the article queue
    async def admit_articles(
        self, articles: Sequence[Article], retention: float
    ) -> list[Article]:
        """Mark unseen articles seen and enqueue them, atomically; return those admitted."""
        ...

    async def claim_articles(
        self, consumer: str, count: int, reclaim_after: float = 60.0
    ) -> list[tuple[str, Article]]:
        """Take up to ``count`` queued articles as (entry id, article); also reclaim stale ones."""
        ...

    async def release_claims(self, consumer: str) -> int:
        """At start-up: make entries a previous life of ``consumer`` claimed claimable now."""
        ...

    async def ack_articles(self, entry_ids: Sequence[str]) -> None:
        """Remove processed entries from the queue."""
        ...

    async def is_seen(self, article_id: str) -> bool:
        """Whether an article id is within the retention window."""
        ...

    # per-feed HTTP validators and health
    async def load_feed_state(self, url: str) -> FeedState | None:
        """The remembered state of one feed, by configured URL."""
        ...

    async def save_feed_state(self, state: FeedState) -> None:
        """Replace the remembered state of one feed."""
        ...

    async def all_feed_states(self) -> list[FeedState]:
        """Every remembered feed state (for `spillover status`)."""
        ...

    # leases (one replica polls a feed per interval) and cooldowns
    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take or renew a lease; False while another owner holds it."""
        ...

    async def release_lease(self, key: str, owner: str) -> None:
        """Give a lease back, only if ``owner`` holds it."""
        ...

    async def try_cooldown(self, key: str, ttl: float) -> bool:
        """Start a cooldown; False if one is already running for ``key``."""
        ...

    # stories: the alerts already raised, for grouping and updates
    async def save_alert(self, alert: Alert, embedding: Sequence[float]) -> None:
        """Remember an alert (latest version) with its story embedding."""
        ...

    async def recent_alerts(
        self, since: datetime
    ) -> list[tuple[Alert, list[float]]]:
        """Alerts created since ``since`` with their embeddings, newest first."""
        ...

    # the durable outbox
    async def outbox_put(self, deliveries: Sequence[Delivery]) -> int:
        """Add deliveries; an id already present is kept as it is. Return how many were new."""
        ...

    async def outbox_due(
        self, now: datetime, owner: str, count: int, lease: float = 60.0
    ) -> list[Delivery]:
        """Due PENDING deliveries, leased to ``owner`` for ``lease`` seconds."""
        ...

    async def outbox_release(self, owner: str) -> int:
        """At start-up: make deliveries a previous life of ``owner`` leased due to anyone now."""
        ...

    async def outbox_done(self, delivery_id: str) -> None:
        """Record a delivery as sent (kept for idempotency, then pruned)."""
        ...

    async def outbox_retry(self, delivery_id: str, next_at: datetime, error: str) -> None:
        """Count a failed attempt and schedule the next one."""
        ...

    async def outbox_dead(self, delivery_id: str, error: str) -> None:
        """Count the failed attempt and move a pending delivery to the dead-letter list."""
        ...

    async def outbox_list(self, status: str | None = None) -> list[Delivery]:
        """Deliveries, optionally of one status ('pending', 'done', 'dead')."""
        ...

    async def outbox_requeue(self, delivery_id: str, now: datetime) -> bool:
        """Put a dead or pending delivery back to be tried now; False if unknown."""
        ...
