"""One feed poll: lease, fetch, parse, detect language, admit new articles; feed health kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from monitor import metrics
from monitor.errors import FeedError, FeedGoneError, StoreError
from monitor.feeds.backoff import next_poll_after
from monitor.models import Article, FeedState

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.config import FeedConfig
    from monitor.feeds.fetch import Fetcher, FetchResult
    from monitor.feeds.worker import ParserPool
    from monitor.state.base import Store

log = structlog.get_logger(__name__)

SEEN_RETENTION = 30 * 24 * 3600.0
_OUTCOMES = {
    "FeedGoneError": "gone", "RateLimitedError": "rate_limited", "BlockedURLError": "blocked",
    "TooLargeError": "too_large", "ParseError": "parse_error",
}


@dataclass(frozen=True)
class PollOutcome:
    """What one poll of one feed did."""

    feed: str
    status: str  # ok | not_modified | error | skipped
    fetched: int = 0
    admitted: int = 0
    error: str = ""


class Poller:
    """Polls feeds; several replicas may run one each against a shared Store."""

    def __init__(
        self, store: Store, fetcher: Fetcher, parser: ParserPool, clock: Clock, owner: str
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self._parser = parser
        self._clock = clock
        self._owner = owner

    async def poll(self, feed: FeedConfig, *, force: bool = False) -> PollOutcome:
        """Poll one feed unless another replica holds its lease or it is backing off."""
        lease_ttl = max(1.0, feed.interval * 0.9)
        if not force and not await self._store.acquire_lease(
            f"poll:{feed.url}", self._owner, lease_ttl
        ):
            return PollOutcome(feed.name, "skipped", error="polled by another replica")
        state = await self._store.load_feed_state(feed.url) or FeedState(url=feed.url)
        now = self._clock.now()
        if not state.active:
            return PollOutcome(feed.name, "skipped", error="deactivated (410 Gone)")
        if not force and state.failures and state.next_poll is not None and state.next_poll > now:
            return PollOutcome(feed.name, "skipped", error="backing off")
        try:
            result = await self._fetcher.fetch(
                feed.name, state.current_url or feed.url, etag=state.etag,
                last_modified=state.last_modified, insecure_tls=feed.insecure_tls,
            )
            articles = [] if result.not_modified else await self._parse(feed, result)
        except FeedError as exc:
            return await self._failed(feed, state, exc)
        admitted = await self._store.admit_articles(articles, SEEN_RETENTION)
        await self._succeeded(feed, state, result, len(admitted))
        for article in admitted:
            metrics.ARTICLES.labels(lang=article.lang or "other").inc()
        status = "not_modified" if result.not_modified else "ok"
        metrics.FETCHES.labels(outcome=status).inc()
        log.info("feed_polled", feed=feed.name, status=status, items=len(articles),
                 new=len(admitted))
        return PollOutcome(feed.name, status, len(articles), len(admitted))

    async def _parse(self, feed: FeedConfig, result: FetchResult) -> list[Article]:
        # The worker also detects each article's language (off the event loop).
        return await self._parser.parse(
            result.content, feed_name=feed.name, feed_url=feed.url,
            content_type=result.content_type, lang_hint=feed.lang,
        )

    async def _succeeded(
        self, feed: FeedConfig, state: FeedState, result: FetchResult, new: int
    ) -> None:
        now = self._clock.now()
        state, _ = next_poll_after(state, None, feed.interval, now)
        update: dict[str, object] = {
            "etag": result.etag or state.etag,
            "last_modified": result.last_modified or state.last_modified,
            "last_status": "304" if result.not_modified else str(result.status),
            "last_error": "", "last_polled": now, "last_ok": now,
            "articles_seen": state.articles_seen + new,
        }
        if result.permanent_url and result.permanent_url != (state.current_url or feed.url):
            update["current_url"] = result.permanent_url
            log.warning("feed_moved", feed=feed.name, new_url=result.permanent_url,
                        hint="update feeds.yaml to the new URL")
        await self._save(state.model_copy(update=update))

    async def _failed(self, feed: FeedConfig, state: FeedState, exc: FeedError) -> PollOutcome:
        now = self._clock.now()
        state, when = next_poll_after(state, exc, feed.interval, now)
        state = state.model_copy(update={
            "last_error": exc.reason[:500], "last_polled": now,
            "last_status": type(exc).__name__,
        })
        await self._save(state)
        metrics.FETCHES.labels(outcome=_OUTCOMES.get(type(exc).__name__, "error")).inc()
        if isinstance(exc, FeedGoneError):
            log.error("feed_gone", feed=feed.name, error=exc.reason,
                      hint="the server says 410 Gone: remove the feed or fix its URL")
        else:
            log.warning("feed_failed", feed=feed.name, error=exc.reason,
                        failures=state.failures, retry_at=when.isoformat())
        return PollOutcome(feed.name, "error", error=exc.reason)

    async def _save(self, state: FeedState) -> None:
        try:
            await self._store.save_feed_state(state)
        except StoreError as exc:
            log.error("feed_state_not_saved", feed=state.url, error=str(exc))
