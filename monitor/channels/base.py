"""The Channel protocol, the config shapes channels read, and the factory that builds them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

from pydantic import SecretStr

from monitor.errors import ConfigError, Problem
from monitor.models import Alert

if TYPE_CHECKING:
    from monitor.render import Renderer


class Channel(Protocol):
    """Somewhere alerts go. ``send`` raises DeliveryError subclasses; it never returns False."""

    name: str

    def recipients(self) -> list[str]:
        """Who receives each alert: one Delivery per recipient (``[""]`` when not addressable)."""
        ...

    async def send(self, alert: Alert, recipient: str, *, idempotency_key: str) -> None:
        """Deliver one alert to one recipient; raise Retryable/PermanentDeliveryError on failure."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...

    def use_renderer(self, renderer: Renderer) -> None:
        """Switch to templates validated by a live reload."""
        ...


# The config shapes (pydantic models in monitor/config/) as read-only protocols.


class ChannelConfig(Protocol):
    """Every channel config: a type tag and a unique name."""

    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str: ...


class EmailConfig(ChannelConfig, Protocol):
    """An SMTP relay and who to send to."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> SecretStr | None: ...
    @property
    def tls(self) -> str: ...  # "starttls" | "implicit" | "none"
    @property
    def sender(self) -> str: ...
    @property
    def recipients(self) -> list[str]: ...
    @property
    def timeout(self) -> float: ...


class SlackConfig(ChannelConfig, Protocol):
    """A Slack incoming webhook."""

    @property
    def webhook_url(self) -> SecretStr: ...
    @property
    def timeout(self) -> float: ...


def mask_url(url: str) -> str:
    """A secret-bearing URL safe to print: ``https://hooks.slack.com/services/T…/B…/…``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "…"
    host = parts.hostname or "…"
    segments = [s for s in parts.path.split("/") if s]
    masked = [s if s == "services" else s[:1] + "…" for s in segments[:-1]]
    if segments:
        masked.append("…")
    return f"{parts.scheme or 'https'}://{host}/" + "/".join(masked)


def build_channel(cfg: ChannelConfig, renderer: Renderer) -> Channel:
    """The channel for one config entry, chosen by ``cfg.type``."""
    # Imported here so a deployment without Slack or SMTP never imports their clients.
    if cfg.type == "console":
        from monitor.channels.console import ConsoleChannel

        return ConsoleChannel(cfg, renderer)
    if cfg.type == "email":
        from monitor.channels.email import EmailChannel

        return EmailChannel(cast(EmailConfig, cfg), renderer)
    if cfg.type == "slack":
        from monitor.channels.slack import SlackChannel

        return SlackChannel(cast(SlackConfig, cfg), renderer)
    raise ConfigError([Problem("config/channels", f"channels.{cfg.name}.type",
                               f"unknown channel type {cfg.type!r}",
                               "use one of: console, email, slack")])
