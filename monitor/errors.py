"""The exception tree: every error Spillover raises on purpose.

::

    MonitorError
      ConfigError          a file in config/ or alerts/ is wrong (file, location, hint)
      SettingsError        an operator setting or secret from the environment is wrong
      FeedError            one feed failed; the others carry on
        FetchError           transport failure: DNS, connect, TLS, timeout, reset
        BlockedURLError      the URL or an address it resolves to is not allowed
        HTTPStatusError      the server answered with a status we do not process
          FeedGoneError        410 Gone: the feed is deactivated
          RateLimitedError     429/503: back off, honouring Retry-After
        TooLargeError        the body or its decoded form is over the cap
        ParseError           the bytes are not a feed we can read
      StoreError           the state back-end failed or is unsafe to use
        StoreUnavailableError  the back-end cannot be reached right now
      ModelError           the encoder could not be built, loaded or checked
      DeliveryError        a channel refused an alert
        RetryableDeliveryError   try again later (SMTP 4xx, Slack 429/5xx, timeouts)
        PermanentDeliveryError   never retry (SMTP 5xx, Slack 4xx): dead-letter it
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MonitorError(Exception):
    """Base of every error Spillover raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a user file: where it is, what is wrong, what to do."""

    file: str
    location: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}: " if self.location else f"{self.file}: "
        text = where + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(MonitorError):
    """A file in config/ or alerts/ is wrong; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration")


class SettingsError(MonitorError):
    """An operator setting or secret from the environment is wrong."""


class FeedError(MonitorError):
    """One feed failed; the others carry on."""

    def __init__(self, feed: str, message: str) -> None:
        self.feed = feed
        self.reason = message
        super().__init__(f"feed {feed}: {message}")


class FetchError(FeedError):
    """Transport failure: DNS, connect, TLS, timeout or a dropped connection."""


class BlockedURLError(FeedError):
    """The URL, a redirect target or a resolved address is not allowed."""


class HTTPStatusError(FeedError):
    """The server answered with a status the fetcher does not process."""

    def __init__(self, feed: str, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(feed, message or f"HTTP {status}")


class FeedGoneError(HTTPStatusError):
    """410 Gone: the feed is deactivated until the operator re-enables it."""


class RateLimitedError(HTTPStatusError):
    """429 or 503: back off for ``retry_after`` seconds (already clamped)."""

    def __init__(self, feed: str, status: int, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(feed, status, f"HTTP {status}, retry after {retry_after}s")


class TooLargeError(FeedError):
    """The body, or its decompressed form, is over the configured cap."""


class ParseError(FeedError):
    """The fetched bytes are not a feed Spillover can read."""


class StoreError(MonitorError):
    """The state back-end failed, or is configured in a way that could lose data."""


class StoreUnavailableError(StoreError):
    """The state back-end cannot be reached right now; retry later."""


class ModelError(MonitorError):
    """The encoder could not be built, loaded or verified."""


class DeliveryError(MonitorError):
    """A channel refused an alert."""

    retryable: bool = False

    def __init__(self, channel: str, message: str, *, retry_after: float | None = None) -> None:
        self.channel = channel
        self.reason = message
        self.retry_after = retry_after
        super().__init__(f"channel {channel}: {message}")


class RetryableDeliveryError(DeliveryError):
    """Try again later: SMTP 4xx, Slack 429 or 5xx, timeouts, dropped connections."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """Never retry: SMTP 5xx, Slack 4xx other than 429; the alert is dead-lettered."""
