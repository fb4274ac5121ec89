"""The shapes of channels.yaml: console, email (SMTP) and Slack channels."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
)

from monitor.config.models import ENV_NAME, ConfigModel
from monitor.yamldoc import fail


class _ChannelBase(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="unique channel name")
    when_env: str | None = Field(
        None, pattern=ENV_NAME, description="enabled only when this env var is non-empty"
    )
    enabled: bool = Field(True, description="false: configured but switched off")


class ConsoleChannel(_ChannelBase):
    """Print alerts to standard output (always available)."""

    type: Literal["console"] = Field(description="console")


# Editors see ${VAR} text where the loader later puts numbers or lists.
_VAR_TEXT = {"type": "string", "pattern": r"\$\{"}
_OR_VAR_INT = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, _VAR_TEXT]}
_OR_VAR_LIST = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}


def _split_recipients(value: Any) -> Any:
    return (
        [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, str)
        else value
    )


class EmailChannel(_ChannelBase):
    """Send alerts by SMTP."""

    type: Literal["email"] = Field(description="email")
    host: str = Field(min_length=1, description="SMTP server host name")
    port: Annotated[int, WithJsonSchema(_OR_VAR_INT)] = Field(
        587, ge=1, le=65535, description="SMTP port"
    )
    username: str | None = Field(None, description="SMTP user; unset: no login")
    password: SecretStr | None = Field(None, description="SMTP password (use ${VAR})")
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="transport security"
    )
    sender: str = Field(pattern=r"@", description="From address")
    recipients: Annotated[
        list[Annotated[str, Field(pattern=r"^[^@\s,]+@[^@\s,]+$")]],
        BeforeValidator(_split_recipients),
        WithJsonSchema(_OR_VAR_LIST),
    ] = Field(min_length=1, description="To addresses (a list, or one comma-separated string)")
    timeout: float = Field(30.0, gt=0, le=300, description="seconds per SMTP conversation")

    @field_validator("username", "password", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # ${SPILLOVER_SMTP_USER:-} expands to "" when unset: that means "no login"
        return None if value == "" else value


class SlackChannel(_ChannelBase):
    """Post alerts to a Slack incoming webhook."""

    type: Literal["slack"] = Field(description="slack")
    webhook_url: SecretStr = Field(description="incoming-webhook URL (a secret: use ${VAR})")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per request")

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        # Plain http only to this machine (a local relay or a test stand-in): never in clear
        # over a network.
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not (parts.scheme == "https" or loopback) or not parts.hostname:
            raise fail(
                "webhook_url must be an https:// URL",
                "copy it from Slack: https://hooks.slack.com/services/…",
            )
        return value


Channel = Annotated[ConsoleChannel | EmailChannel | SlackChannel, Field(discriminator="type")]
CHANNEL_TYPES: dict[str, type[ConsoleChannel | EmailChannel | SlackChannel]] = {
    "console": ConsoleChannel,
    "email": EmailChannel,
    "slack": SlackChannel,
}




class ChannelsFile(ConfigModel):
    """config/channels.yaml."""

    channels: list[Channel] = Field(description="where alerts go")


