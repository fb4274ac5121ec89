"""The email channel: one multipart (plain + HTML) message per recipient over SMTP (aiosmtplib)."""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from monitor.channels.base import EmailConfig
from monitor.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    Problem,
    RetryableDeliveryError,
)
from monitor.models import Alert, utcnow
from monitor.render import one_line

if TYPE_CHECKING:
    from monitor.render import Renderer

log = structlog.get_logger(__name__)

TLS_MODES = ("starttls", "implicit", "none")


def message_id(idempotency_key: str) -> str:
    """A Message-ID that is the same for every retry of one delivery, so clients can dedupe."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@spillover>"


def build_message(
    renderer: Renderer, alert: Alert, *, sender: str, recipient: str, idempotency_key: str
) -> EmailMessage:
    """The alert as multipart/alternative (plain text, then HTML), headers safe from injection."""
    subject, text, html = renderer.render_email(alert)
    # policy.SMTP: CRLF line ends and RFC 2047 encoded-words for the Arabic subject; aiosmtplib
    # switches to SMTPUTF8 by itself only when an address is non-ASCII and the server allows it.
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = one_line(subject)  # CR/LF can never reach a header
    msg["From"] = sender
    msg["To"] = recipient
    msg["Date"] = email.utils.format_datetime(utcnow())
    msg["Message-ID"] = message_id(idempotency_key)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to alerts
    msg["X-Spillover-Alert"] = f"{alert.id} v{alert.version}"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


class EmailChannel:
    """Sends each alert to each configured recipient, one SMTP session per message."""

    def __init__(
        self,
        cfg: EmailConfig,
        renderer: Renderer,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if cfg.tls not in TLS_MODES:
            raise ConfigError([Problem("config/channels", f"channels.{cfg.name}.tls",
                                       f"unknown TLS mode {cfg.tls!r}",
                                       "use starttls (port 587), implicit (port 465) or none")])
        self.name = cfg.name
        self._cfg = cfg
        self._renderer = renderer
        # Tests and private CAs pass a context; otherwise the system trust store is used.
        self._tls_context = tls_context or ssl.create_default_context()
        # EHLO name from the sender's domain: avoids aiosmtplib's blocking getfqdn() lookup.
        self._ehlo_name = cfg.sender.rpartition("@")[2].strip("> ") or "localhost"
        if cfg.tls == "none" and cfg.password is not None:
            log.warning("smtp_credentials_in_clear", channel=self.name, host=cfg.host,
                        hint="set tls: starttls or implicit so the password is encrypted")

    def recipients(self) -> list[str]:
        """Each configured address gets its own delivery (a 451 for one retries only that one)."""
        return list(self._cfg.recipients)

    async def send(self, alert: Alert, recipient: str, *, idempotency_key: str) -> None:
        """Send one message to one recipient within the configured overall timeout."""
        try:
            msg = build_message(self._renderer, alert, sender=self._cfg.sender,
                                recipient=recipient, idempotency_key=idempotency_key)
        except ValueError as exc:  # e.g. a recipient with a line break in it
            raise PermanentDeliveryError(self.name, f"cannot build the message: {exc}") from exc
        try:
            async with asyncio.timeout(self._cfg.timeout):
                await self._transmit(msg, recipient)
        except TimeoutError as exc:
            raise RetryableDeliveryError(
                self.name, f"{self._where} did not finish within {self._cfg.timeout:g} s"
            ) from exc

    @property
    def _where(self) -> str:
        return f"SMTP server {self._cfg.host}:{self._cfg.port}"

    async def _transmit(self, msg: EmailMessage, recipient: str) -> None:
        cfg = self._cfg
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, use_tls=cfg.tls == "implicit", start_tls=False,
            tls_context=self._tls_context, timeout=cfg.timeout, local_hostname=self._ehlo_name,
        )
        try:
            await smtp.connect()
            if cfg.tls == "starttls":
                await self._starttls(smtp)
            if cfg.username:
                password = cfg.password.get_secret_value() if cfg.password else ""
                await smtp.login(cfg.username, password)
            await smtp.send_message(msg, sender=cfg.sender, recipients=[recipient])
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise self._translate(exc, recipient) from exc
        except BaseException:  # cancelled by the overall timeout: drop the socket, no QUIT
            smtp.close()
            raise
        await _quit(smtp)
        log.info("email_sent", channel=self.name, recipient=recipient,
                 message_id=msg["Message-ID"])

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        await smtp.ehlo()
        if not smtp.supports_extension("starttls"):
            # Never fall back to clear text: retry later, someone may be stripping STARTTLS.
            log.error("smtp_starttls_missing", channel=self.name, host=self._cfg.host,
                      port=self._cfg.port,
                      hint="the server did not offer STARTTLS; fix the relay or use tls: implicit")
            raise RetryableDeliveryError(
                self.name, f"{self._where} does not offer STARTTLS; refusing to send in clear"
            )
        await smtp.starttls()

    def _translate(self, exc: Exception, recipient: str) -> DeliveryError:
        """SMTP 4xx and transport failures are retryable; 5xx and misconfiguration are not."""
        code, text = _reply(exc)
        if code is not None:
            detail = f"{self._where} replied {code} {text} for {recipient}"
            if 400 <= code < 500:
                return RetryableDeliveryError(self.name, detail)
            if 500 <= code < 600:
                return PermanentDeliveryError(self.name, detail)
        if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError,
                            aiosmtplib.SMTPTimeoutError, OSError)):
            return RetryableDeliveryError(self.name, f"cannot talk to {self._where}: {exc}")
        # The server lacks something we need (AUTH, SMTPUTF8): retrying will not help.
        return PermanentDeliveryError(self.name, f"{self._where}: {exc}")

    def use_renderer(self, renderer: Renderer) -> None:
        """Switch to templates validated by a live reload."""
        self._renderer = renderer

    async def close(self) -> None:
        """Nothing pooled: each send opens and closes its own session."""


def _reply(exc: Exception) -> tuple[int | None, str]:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        return exc.code, one_line(exc.message, 300)
    return None, ""


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say QUIT politely; the message is already accepted, so a failure here is not an error."""
    if not smtp.is_connected:
        return
    try:
        await smtp.quit(timeout=2)
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()
