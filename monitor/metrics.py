"""Prometheus metrics: every ``spillover_*`` series, in one registry served at /metrics."""

from __future__ import annotations

from typing import Final, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitor.errors import (
    BlockedURLError,
    FeedError,
    FeedGoneError,
    ParseError,
    RateLimitedError,
    TooLargeError,
)

FetchOutcome = Literal[
    "ok", "not_modified", "error", "gone", "rate_limited", "blocked", "too_large", "parse_error"
]
AlertOutcome = Literal["sent", "retry", "dead"]
ReloadResult = Literal["ok", "failed", "refused"]

FETCH_OUTCOMES: Final = (
    "ok", "not_modified", "error", "gone", "rate_limited", "blocked", "too_large", "parse_error"
)
ALERT_OUTCOMES: Final = ("sent", "retry", "dead")
RELOAD_RESULTS: Final = ("ok", "failed", "refused")

# A dedicated registry, not prometheus_client's global one: tests and a second import of a
# library that registers its own metrics cannot collide with ours.
# The *_created series double every scrape and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD: Final = Info("spillover_build", "Spillover version running", registry=REGISTRY)

FEEDS: Final = Gauge(
    "spillover_feeds", "Feeds configured, by state", ["state"], registry=REGISTRY
)
FETCHES: Final = Counter(
    "spillover_fetch", "Feed polls by outcome", ["outcome"], registry=REGISTRY
)
FETCH_SECONDS: Final = Histogram(
    "spillover_fetch_seconds", "Wall time of one feed fetch (HTTP and decode)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60), registry=REGISTRY,
)
ARTICLES: Final = Counter(
    "spillover_articles", "New articles admitted, by detected language", ["lang"],
    registry=REGISTRY,
)
VERDICTS: Final = Counter(
    "spillover_verdicts", "Articles judged, by strongest signal", ["signal"], registry=REGISTRY
)
ESCALATIONS: Final = Counter(
    "spillover_escalations", "Articles judged an escalation, by severity", ["severity"],
    registry=REGISTRY,
)
ALERTS: Final = Counter(
    "spillover_alerts", "Alert delivery attempts, by channel and outcome",
    ["channel", "outcome"], registry=REGISTRY,
)
OUTBOX_DEPTH: Final = Gauge(
    "spillover_outbox_depth", "Alerts waiting in the outbox", registry=REGISTRY
)
OUTBOX_OLDEST_SECONDS: Final = Gauge(
    "spillover_outbox_oldest_age_seconds", "Age of the oldest alert waiting in the outbox",
    registry=REGISTRY,
)
DEAD_LETTERS: Final = Gauge(
    "spillover_dead_letters", "Alerts dead-lettered and not yet retried by an operator",
    registry=REGISTRY,
)
CLASSIFY_SECONDS: Final = Histogram(
    "spillover_classify_seconds", "Wall time to classify one batch of articles",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
CLASSIFY_BATCH: Final = Histogram(
    "spillover_classify_batch_size", "Articles per classified batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY,
)
CONFIG_RELOADS: Final = Counter(
    "spillover_config_reloads", "Configuration reloads, by result", ["result"], registry=REGISTRY
)
RELOADS: Final = CONFIG_RELOADS  # the name app.py uses
READY: Final = Gauge(
    "spillover_ready", "1 when every readiness check passes, else 0", registry=REGISTRY
)

# Series that exist from the first scrape at 0, so rate() and alert rules see them before the
# first event rather than "no data".
for _outcome in FETCH_OUTCOMES:
    FETCHES.labels(outcome=_outcome)
for _result in RELOAD_RESULTS:
    CONFIG_RELOADS.labels(result=_result)

# Most specific class first: FeedGoneError and RateLimitedError are HTTPStatusErrors.
_ERROR_OUTCOMES: Final[tuple[tuple[type[FeedError], FetchOutcome], ...]] = (
    (FeedGoneError, "gone"),
    (RateLimitedError, "rate_limited"),
    (BlockedURLError, "blocked"),
    (TooLargeError, "too_large"),
    (ParseError, "parse_error"),
)


def fetch_outcome(exc: FeedError) -> FetchOutcome:
    """The ``spillover_fetch_total`` outcome label for a feed error."""
    for kind, outcome in _ERROR_OUTCOMES:
        if isinstance(exc, kind):
            return outcome
    return "error"


def record_fetch(outcome: FetchOutcome, seconds: float | None = None) -> None:
    """Count one poll outcome and, when given, how long the fetch took."""
    FETCHES.labels(outcome=outcome if outcome in FETCH_OUTCOMES else "error").inc()
    if seconds is not None:
        FETCH_SECONDS.observe(seconds)


def record_classify(seconds: float, batch: int) -> None:
    """Record one classified batch: its wall time and its size."""
    CLASSIFY_SECONDS.observe(seconds)
    CLASSIFY_BATCH.observe(batch)


def record_alert(channel: str, outcome: AlertOutcome) -> None:
    """Count one delivery attempt on a channel: sent, to be retried, or dead-lettered."""
    ALERTS.labels(channel=channel, outcome=outcome).inc()


def record_reload(result: ReloadResult) -> None:
    """Count one configuration reload: applied, failed validation, or refused (unsafe change)."""
    CONFIG_RELOADS.labels(result=result).inc()


def set_outbox(depth: int, oldest_age_seconds: float, dead_letters: int | None = None) -> None:
    """Publish outbox figures the app read from the store (scrapes cannot await the store)."""
    OUTBOX_DEPTH.set(depth)
    OUTBOX_OLDEST_SECONDS.set(max(0.0, oldest_age_seconds))
    if dead_letters is not None:
        DEAD_LETTERS.set(dead_letters)


def set_feeds(active: int, inactive: int) -> None:
    """Publish how many configured feeds are being polled and how many are deactivated."""
    FEEDS.labels(state="active").set(active)
    FEEDS.labels(state="inactive").set(inactive)


def set_ready(ready: bool) -> None:
    """Publish overall readiness (the health listener keeps this in step with /readyz)."""
    READY.set(1 if ready else 0)


def set_build(version: str) -> None:
    """Publish the running version as ``spillover_build_info{version=...}``."""
    BUILD.info({"version": version})


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its Content-Type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
