"""Poll scheduling after success and failure: reset, Retry-After, 410, jittered backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import FeedGoneError, FetchError, HTTPStatusError, ParseError, RateLimitedError
from monitor.feeds.backoff import BACKOFF_CAP, next_poll_after, parse_retry_after
from monitor.models import FeedState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INTERVAL = 600.0


def delay(when: datetime) -> float:
    """Seconds from NOW to ``when``."""
    return (when - NOW).total_seconds()


def test_success_resets_failures_and_polls_after_the_interval() -> None:
    """A success clears failures and errors and schedules the next poll one interval out."""
    state = FeedState(url="https://a.example/rss", failures=7, last_error="boom")
    updated, when = next_poll_after(state, None, INTERVAL, NOW)
    assert delay(when) == INTERVAL and updated.next_poll == when
    assert updated.failures == 0 and updated.last_error == "" and updated.last_ok == NOW
    assert updated.active


@pytest.mark.parametrize(("retry_after", "expected"), [
    (7200.0, 7200.0), (5.0, INTERVAL), (10**9, 86400.0),
])
def test_rate_limit_honours_retry_after_clamped(retry_after: float, expected: float) -> None:
    """429/503 wait Retry-After, but never less than the interval nor more than a day."""
    error = RateLimitedError("a", 429, retry_after)
    updated, when = next_poll_after(FeedState(url="u"), error, INTERVAL, NOW)
    assert delay(when) == expected and updated.failures == 1 and updated.active


def test_rate_limit_without_retry_after_backs_off() -> None:
    """A 503 with no Retry-After falls back to the jittered exponential backoff."""
    error = RateLimitedError("a", 503, None)
    _, when = next_poll_after(FeedState(url="u", failures=3), error, INTERVAL, NOW,
                              random.Random(1))
    assert INTERVAL <= delay(when) <= INTERVAL * 16


def test_gone_deactivates_the_feed() -> None:
    """410 sets active=False and records the error."""
    error = FeedGoneError("a", 410, "HTTP 410 Gone")
    updated, _ = next_poll_after(FeedState(url="u"), error, INTERVAL, NOW)
    assert not updated.active and updated.last_status == "FeedGoneError"
    assert "410" in updated.last_error


@pytest.mark.parametrize("error", [
    FetchError("a", "timeout"), HTTPStatusError("a", 500), ParseError("a", "not a feed"),
])
def test_failures_back_off_exponentially_within_bounds(error: FetchError) -> None:
    """Each failure raises the ceiling (interval·2ⁿ, capped at 6 h), never below the interval."""
    rng, state = random.Random(7), FeedState(url="u")
    for n in range(1, 12):
        state, when = next_poll_after(state, error, INTERVAL, NOW, rng)
        assert state.failures == n
        assert INTERVAL <= delay(when) <= min(BACKOFF_CAP, INTERVAL * 2**n)


def test_backoff_is_jittered_so_feeds_spread_out() -> None:
    """Feeds failing together get different retry times."""
    state = FeedState(url="u", failures=4)
    error = FetchError("a", "reset")
    delays = {delay(next_poll_after(state, error, INTERVAL, NOW, random.Random(s))[1])
              for s in range(20)}
    assert len(delays) == 20


def test_backoff_never_gives_up() -> None:
    """After a thousand failures the feed is still active and retried within the 6 h cap."""
    state = FeedState(url="u", failures=1000)
    updated, when = next_poll_after(state, FetchError("a", "down"), INTERVAL, NOW)
    assert updated.active and updated.failures == 1001
    assert INTERVAL <= delay(when) <= BACKOFF_CAP


def test_interval_longer_than_the_cap_is_kept() -> None:
    """A feed polled daily is not retried more often than daily just because it failed."""
    _, when = next_poll_after(FeedState(url="u"), FetchError("a", "x"), 86400.0, NOW)
    assert delay(when) == 86400.0


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0),
    (" 0 ", 0.0),
    ((NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT"), 90.0),
    ((NOW - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT"), 0.0),
    ("99999999999", 86400.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 86400.0),
    ("soon", None), ("-5", None), ("", None), (None, None),
])
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Seconds or HTTP-date become seconds from now, clamped to [0, 1 day]; junk is None."""
    assert parse_retry_after(header, NOW) == expected
