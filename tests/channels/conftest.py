"""Fixtures for channel tests: real aiosmtpd servers (plain, STARTTLS, implicit TLS), certificates,
the shipped renderer, channel configs, and an in-memory outbox (a core fake for the dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from monitor.models import Delivery, DeliveryStatus
from monitor.render import Renderer
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "desk", "correct horse"


@dataclass(frozen=True)
class EmailCfg:
    """The shape of config.EmailChannel, without importing config.py."""

    host: str
    port: int
    name: str = "mail"
    type: str = "email"
    username: str | None = None
    password: SecretStr | None = None
    tls: str = "none"
    sender: str = "spillover@example.org"
    recipients: list[str] = field(default_factory=lambda: ["desk@example.org"])
    timeout: float = 5.0


@dataclass(frozen=True)
class SlackCfg:
    """The shape of config.SlackChannel (loopback http is allowed here, not in config)."""

    webhook_url: SecretStr
    name: str = "slack"
    type: str = "slack"
    timeout: float = 5.0


@dataclass
class Received:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    authenticated: bool


class Recorder:
    """aiosmtpd handler: records messages; replies can be scripted per recipient and for DATA."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.data_calls = 0
        self.rcpt_replies: dict[str, list[str]] = {}
        self.data_replies: list[str] = []
        self.data_delay = 0.0

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        replies = self.rcpt_replies.get(address)
        if replies:
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        self.data_calls += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_replies:
            return self.data_replies.pop(0)
        content = envelope.original_content or b""
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                      content, bool(session.authenticated)))
        return "250 Message accepted"


def _authenticator(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@dataclass
class SMTPStandIn:
    """A running aiosmtpd server and what it saw."""

    handler: Recorder
    port: int
    client_tls: ssl.SSLContext | None = None


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority for the TLS servers."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """Server-side TLS context with a certificate for 127.0.0.1 signed by ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """Client-side TLS context trusting only ``ca``."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@contextlib.contextmanager
def _serve(handler: Recorder, **kwargs: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            server_hostname="mx.test", ready_timeout=5, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def smtp_plain() -> Iterator[SMTPStandIn]:
    """An SMTP server without TLS (so it does not offer STARTTLS)."""
    handler = Recorder()
    with _serve(handler) as port:
        yield SMTPStandIn(handler, port)


@pytest.fixture
def smtp_starttls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> Iterator[SMTPStandIn]:
    """An SMTP submission server: STARTTLS required, then AUTH required."""
    handler = Recorder()
    with _serve(handler, tls_context=server_tls, require_starttls=True,
                authenticator=_authenticator, auth_required=True, auth_require_tls=True) as port:
        yield SMTPStandIn(handler, port, client_tls)


@pytest.fixture
def smtp_implicit(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> Iterator[SMTPStandIn]:
    """An SMTP server speaking TLS from the first byte (port 465 style).

    No AUTH here: aiosmtpd does not count implicit TLS as TLS for ``auth_require_tls``.
    """
    handler = Recorder()
    with _serve(handler, ssl_context=server_tls) as port:
        yield SMTPStandIn(handler, port, client_tls)


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    """The renderer over the shipped alerts/ templates."""
    return Renderer(ROOT / "alerts")


class MemoryOutbox:
    """The Store's outbox methods in memory: a core fake for dispatcher tests."""

    def __init__(self) -> None:
        self.items: dict[str, Delivery] = {}
        self.leases: dict[str, datetime] = {}

    async def outbox_put(self, deliveries: Sequence[Delivery]) -> int:
        new = [d for d in deliveries if d.id not in self.items]
        self.items.update((d.id, d) for d in new)
        return len(new)

    async def outbox_due(
        self, now: datetime, owner: str, count: int, lease: float = 60.0
    ) -> list[Delivery]:
        due = [d for d in self.items.values()
               if d.status is DeliveryStatus.PENDING and d.next_at <= now
               and self.leases.get(d.id, now) <= now][:count]
        for d in due:
            self.leases[d.id] = now + timedelta(seconds=lease)
        return due

    def _set(self, delivery_id: str, **changes: Any) -> None:
        self.items[delivery_id] = replace_model(self.items[delivery_id], **changes)
        self.leases.pop(delivery_id, None)

    async def outbox_done(self, delivery_id: str) -> None:
        self._set(delivery_id, status=DeliveryStatus.DONE)

    async def outbox_retry(self, delivery_id: str, next_at: datetime, error: str) -> None:
        attempts = self.items[delivery_id].attempts + 1
        self._set(delivery_id, attempts=attempts, next_at=next_at, last_error=error)

    async def outbox_dead(self, delivery_id: str, error: str) -> None:
        attempts = self.items[delivery_id].attempts + 1
        self._set(delivery_id, status=DeliveryStatus.DEAD, attempts=attempts, last_error=error)

    async def outbox_list(self, status: str | None = None) -> list[Delivery]:
        return [d for d in self.items.values() if status is None or d.status.value == status]


def replace_model(delivery: Delivery, **changes: Any) -> Delivery:
    """A frozen Delivery with some fields changed."""
    return delivery.model_copy(update=changes)


__all__ = ["EmailCfg", "MemoryOutbox", "Recorder", "SlackCfg"]
