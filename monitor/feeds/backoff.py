"""When to poll a feed next: reset on success, Retry-After on 429/503, jittered backoff."""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime, timedelta
from typing import Protocol

from monitor.errors import FeedError, FeedGoneError, RateLimitedError
from monitor.models import FeedState

MAX_RETRY_AFTER = 24 * 3600.0  # a server asking for more is misconfigured or hostile
BACKOFF_CAP = 6 * 3600.0  # a broken feed is still retried at least every 6 h
_MAX_EXPONENT = 32  # 2**32 * any interval is far past the cap; avoids float overflow


class Random(Protocol):
    """The part of ``random`` backoff needs (tests pass a seeded ``random.Random``)."""

    def uniform(self, a: float, b: float) -> float:
        """A float between a and b."""
        ...


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``, clamped to [0, 24 h]; None if absent or unreadable.

    Both forms are accepted: delta-seconds and an HTTP-date.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _backoff_delay(failures: int, interval: float, rng: Random) -> float:
    """Full jitter between the interval and an exponential ceiling (capped at 6 h).

    Never polls a failing feed more often than a healthy one; jitter spreads retries so
    feeds that failed together do not return in lock-step.
    """
    ceiling = min(BACKOFF_CAP, interval * 2.0 ** min(failures, _MAX_EXPONENT))
    return rng.uniform(interval, max(interval, ceiling))


def _failure_delay(error: FeedError, failures: int, interval: float, rng: Random) -> float:
    if isinstance(error, FeedGoneError):
        return MAX_RETRY_AFTER
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return min(max(error.retry_after, interval), MAX_RETRY_AFTER)
    return _backoff_delay(failures, interval, rng)


def next_poll_after(
    state: FeedState,
    error: FeedError | None,
    interval: float,
    now: datetime,
    rng: Random = random,
) -> tuple[FeedState, datetime]:
    """The updated state and when to poll next.

    Success resets the failure count; 410 sets ``active=False``; every other failure backs
    off, but the feed is never given up for good.
    """
    if error is None:
        when = now + timedelta(seconds=interval)
        updated = state.model_copy(update={
            "failures": 0, "next_poll": when, "last_status": "ok", "last_error": "",
            "last_polled": now, "last_ok": now,
        })
        return updated, when
    failures = state.failures + 1
    when = now + timedelta(seconds=_failure_delay(error, failures, interval, rng))
    updated = state.model_copy(update={
        "failures": failures, "next_poll": when, "last_status": type(error).__name__,
        "last_error": error.reason, "last_polled": now,
        "active": state.active and not isinstance(error, FeedGoneError),
    })
    return updated, when
