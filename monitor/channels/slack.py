"""The Slack channel: posts Block Kit JSON to an incoming webhook, never revealing its URL."""

from __future__ import annotations

import asyncio
import email.utils
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import structlog

from monitor.channels.base import SlackConfig, mask_url
from monitor.errors import PermanentDeliveryError, RetryableDeliveryError
from monitor.models import Alert

if TYPE_CHECKING:
    from monitor.render import Renderer

log = structlog.get_logger(__name__)

DEFAULT_RETRY_AFTER = 30.0
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait from a Retry-After header (seconds or HTTP-date), clamped to 0..1 h."""
    if not value or not value.strip():
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _RedactSecrets(logging.Filter):
    """Masks webhook URLs in stdlib log records: httpx logs every request URL at INFO."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}
        self._holders: dict[str, int] = {}

    def hold(self, secret: str, masked: str) -> None:
        """Mask ``secret`` until every channel that holds it has let go."""
        self.secrets[secret] = masked
        self._holders[secret] = self._holders.get(secret, 0) + 1

    def let_go(self, secret: str) -> None:
        """One holder is done (a reload may still run a new channel on the same URL)."""
        left = self._holders.get(secret, 0) - 1
        if left > 0:
            self._holders[secret] = left
        else:
            self._holders.pop(secret, None)
            self.secrets.pop(secret, None)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret, masked in self.secrets.items():
                message = message.replace(secret, masked)
            record.msg, record.args = message, None
        return True


_REDACT = _RedactSecrets()
# Filters do not propagate to child loggers, so name each one that could see a request.
for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2"):
    logging.getLogger(_name).addFilter(_REDACT)


class SlackChannel:
    """One incoming webhook; the whole call (connect, send, read) is under one timeout."""

    def __init__(
        self, cfg: SlackConfig, renderer: Renderer, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.name = cfg.name
        self._url = cfg.webhook_url.get_secret_value()
        self.masked_url = mask_url(self._url)
        self._timeout = cfg.timeout
        self._renderer = renderer
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout), follow_redirects=False, trust_env=False
        )
        _REDACT.hold(self._url, self.masked_url)
        self._closed = False

    def recipients(self) -> list[str]:
        """A webhook posts to one fixed Slack channel."""
        return [""]

    async def send(self, alert: Alert, recipient: str, *, idempotency_key: str) -> None:
        """Post one alert; map Slack's answer onto retryable or permanent errors."""
        payload = self._renderer.render_slack(alert)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(self._url, json=payload)
        except TimeoutError as exc:
            raise RetryableDeliveryError(
                self.name, f"webhook {self.masked_url} did not answer within {self._timeout:g} s"
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            # httpx messages can quote the URL; chain only when the secret is not in it.
            cause = None if self._url in str(exc) else exc
            raise RetryableDeliveryError(
                self.name, f"cannot reach webhook {self.masked_url}: {detail}"
            ) from cause
        self._check(response)
        log.info("slack_sent", channel=self.name, webhook=self.masked_url, alert=alert.id)

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = self._scrub(" ".join(response.text.split())[:200])
        detail = f"webhook {self.masked_url} answered HTTP {status}: {body or 'no body'}"
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            wait = parse_retry_after(retry_after) if status == 429 or retry_after else None
            raise RetryableDeliveryError(self.name, detail, retry_after=wait)
        hint = " (the webhook was revoked or deleted: create a new one)" if status in {
            403, 404, 410} else ""
        raise PermanentDeliveryError(self.name, detail + hint)

    def _scrub(self, text: str) -> str:
        return text.replace(self._url, self.masked_url)

    def use_renderer(self, renderer: Renderer) -> None:
        """Switch to templates validated by a live reload."""
        self._renderer = renderer

    async def close(self) -> None:
        """Close the HTTP client if this channel created it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._own_client:
            await self._client.aclose()
        _REDACT.let_go(self._url)
