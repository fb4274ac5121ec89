"""The domain objects passed between stages: Article, Verdict, Alert, Delivery, FeedState.

All are frozen pydantic models so they serialise to JSON for the state back-ends
(SQLite rows, Redis stream entries) and back without loss.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


class Article(_Frozen):
    """One feed entry, cleaned: plain-text title and summary, UTC time, stable id."""

    id: str = Field(description="stable id: guid, else canonical link, else content hash")
    feed: str = Field(description="the feed's name (its URL when unnamed)")
    feed_url: str
    title: str
    summary: str = ""
    link: str = ""
    published: datetime | None = None
    authors: tuple[str, ...] = ()
    lang_hint: str | None = Field(default=None, description="the feed's configured lang")
    lang: str | None = Field(default=None, description="detected: 'en', 'ar' or 'other'")
    fetched: datetime = Field(default_factory=utcnow)

    @property
    def text(self) -> str:
        """Title and summary as one text, the classifier's input."""
        if self.summary and self.summary != self.title:
            return f"{self.title}. {self.summary}" if self.title else self.summary
        return self.title


class SignalScore(_Frozen):
    """How strongly an article expresses one configured signal (0..1)."""

    name: str
    score: float


class Verdict(_Frozen):
    """The classifier's judgement of one article, with its explanation."""

    article_id: str
    lang: str
    score: float = Field(ge=0.0, le=1.0, description="calibrated escalation probability")
    escalation: bool = Field(description="the shipped default watch-list would alert")
    signals: tuple[SignalScore, ...] = ()
    regions: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    watchlists: tuple[str, ...] = Field(default=(), description="watch-lists that matched")


class Severity(StrEnum):
    """How urgent an alert is; quiet hours let only critical through."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Order for comparisons: info < warning < critical."""
        return ("info", "warning", "critical").index(self.value)


class Source(_Frozen):
    """One outlet's report of a story."""

    article_id: str
    feed: str
    title: str
    link: str = ""
    lang: str = "en"
    published: datetime | None = None


class Alert(_Frozen):
    """What people receive: one story, every source, and why it fired."""

    id: str = Field(description="stable story id; with version it forms the idempotency key")
    version: int = Field(default=1, description="bumped when severity rises or sources grow")
    watchlist: str
    severity: Severity
    title: str
    summary: str = ""
    lang: str = "en"
    score: float = 0.0
    signals: tuple[SignalScore, ...] = ()
    regions: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    sources: tuple[Source, ...] = ()
    reason: str = ""
    created: datetime = Field(default_factory=utcnow)


class DeliveryStatus(StrEnum):
    """Where an outbox entry stands."""

    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


class Delivery(_Frozen):
    """One alert for one channel and recipient: the unit of at-least-once delivery."""

    id: str = Field(description="idempotency key: alert id, version, channel, recipient")
    alert: Alert
    channel: str
    recipient: str = ""
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow)
    status: DeliveryStatus = DeliveryStatus.PENDING
    last_error: str = ""

    @staticmethod
    def key(alert: Alert, channel: str, recipient: str = "") -> str:
        """The idempotency key of an alert version on one channel and recipient."""
        return f"{alert.id}:v{alert.version}:{channel}:{recipient}"


class FeedState(_Frozen):
    """What Spillover remembers about one feed between polls."""

    url: str = Field(description="the configured URL: the key")
    current_url: str | None = Field(default=None, description="after a permanent redirect")
    etag: str | None = None
    last_modified: str | None = None
    active: bool = True
    failures: int = 0
    next_poll: datetime | None = Field(default=None, description="not before: backoff")
    last_status: str = ""
    last_error: str = ""
    last_polled: datetime | None = None
    last_ok: datetime | None = None
    articles_seen: int = 0
