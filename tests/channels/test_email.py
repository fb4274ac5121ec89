"""The email channel against real aiosmtpd servers: encoding, TLS, auth, and SMTP reply mapping."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from email.message import EmailMessage

import pytest
from pydantic import SecretStr

from monitor.channels import build_channel
from monitor.channels.email import EmailChannel, message_id
from monitor.clock import SystemClock
from monitor.dispatch import Dispatcher
from monitor.errors import PermanentDeliveryError, RetryableDeliveryError
from monitor.models import DeliveryStatus
from monitor.render import Renderer, sample_alert
from tests.channels.conftest import PASSWORD, USER, EmailCfg, MemoryOutbox, SMTPStandIn
from tests.conftest import free_port


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def plain(server: SMTPStandIn, renderer: Renderer, **kw: object) -> EmailChannel:
    return EmailChannel(EmailCfg(host="127.0.0.1", port=server.port, **kw), renderer)  # type: ignore[arg-type]


async def test_arabic_alert_arrives_intact(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """An Arabic alert's subject and both bodies decode to the rendered text; HTML is RTL."""
    alert = sample_alert(lang="ar")
    channel = plain(smtp_plain, renderer)
    await channel.send(alert, "desk@example.org", idempotency_key="k1")

    [received] = smtp_plain.handler.messages
    assert received.rcpt_tos == ["desk@example.org"]
    raw_subject = received.content.split(b"\r\n\r\n")[0].split(b"Subject:")[1].split(b"\r\n")[0]
    assert raw_subject.isascii() and b"=?utf-8?" in raw_subject.lower()  # RFC 2047 on the wire
    msg = parse(received.content)
    subject, text, _html = renderer.render_email(alert)
    assert msg["Subject"] == subject and alert.title in subject
    assert msg.get_content_type() == "multipart/alternative"
    text_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content().replace("\r\n", "\n").strip() == text.strip()
    assert alert.title in html_part.get_content()
    assert 'dir="rtl"' in html_part.get_content() and 'lang="ar"' in html_part.get_content()
    assert msg["Message-ID"] == message_id("k1")
    assert msg["Date"] is not None and msg["To"] == "desk@example.org"


async def test_message_id_is_stable_per_key(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """Two sends with one idempotency key share a Message-ID; another key gets another one."""
    channel = plain(smtp_plain, renderer)
    alert = sample_alert()
    for key in ("same", "same", "other"):
        await channel.send(alert, "desk@example.org", idempotency_key=key)
    ids = [parse(m.content)["Message-ID"] for m in smtp_plain.handler.messages]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0].startswith("<") and ids[0].endswith("@spillover>") and len(ids[0]) == 44


async def test_421_is_retryable_then_delivers(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """A 421 at DATA raises Retryable; the next attempt is accepted exactly once."""
    smtp_plain.handler.data_replies = ["421 Service not available, try later"]
    channel = plain(smtp_plain, renderer)
    with pytest.raises(RetryableDeliveryError, match="421"):
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert len(smtp_plain.handler.messages) == 1


async def test_550_is_permanent(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """A 550 for the recipient raises Permanent naming the code and recipient; no DATA is sent."""
    smtp_plain.handler.rcpt_replies["gone@example.org"] = ["550 No such user"]
    channel = plain(smtp_plain, renderer)
    with pytest.raises(PermanentDeliveryError, match=r"550.*gone@example\.org"):
        await channel.send(sample_alert(), "gone@example.org", idempotency_key="k")
    assert smtp_plain.handler.data_calls == 0


async def test_451_for_one_of_three_retries_only_that_one(
    smtp_plain: SMTPStandIn, renderer: Renderer
) -> None:
    """Through the outbox, a 451 for one recipient retries only that recipient, then delivers it."""
    recipients = ["a@example.org", "b@example.org", "c@example.org"]
    smtp_plain.handler.rcpt_replies["b@example.org"] = ["451 Greylisted", "250 OK"]
    channel = plain(smtp_plain, renderer, recipients=recipients)
    outbox = MemoryOutbox()
    dispatcher = Dispatcher(outbox, {"mail": channel}, clock=SystemClock(), owner="t",  # type: ignore[arg-type]
                            base_delay=0.05, max_delay=0.1)
    await outbox.outbox_put(dispatcher.enqueue(sample_alert(), ["mail"]))

    first = await dispatcher.run_once()
    assert (first.delivered, first.retried) == (2, 1)
    summary = await dispatcher.drain(time.monotonic() + 10)
    assert summary.delivered == 1 and summary.pending == 0
    delivered = [m.rcpt_tos[0] for m in smtp_plain.handler.messages]
    assert sorted(delivered) == recipients and len(delivered) == 3
    retried = [d for d in outbox.items.values() if d.attempts]
    assert [d.recipient for d in retried] == ["b@example.org"]
    assert all(d.status is DeliveryStatus.DONE for d in outbox.items.values())


async def test_starttls_required_but_not_offered_refuses(
    smtp_plain: SMTPStandIn, renderer: Renderer
) -> None:
    """With tls=starttls and a server that does not offer it, nothing is sent in clear."""
    channel = plain(smtp_plain, renderer, tls="starttls", username=USER,
                    password=SecretStr(PASSWORD))
    with pytest.raises(RetryableDeliveryError, match="STARTTLS"):
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert smtp_plain.handler.data_calls == 0 and not smtp_plain.handler.messages


async def test_starttls_and_auth_deliver(smtp_starttls: SMTPStandIn, renderer: Renderer) -> None:
    """STARTTLS with a trusted certificate, then AUTH, then the message is accepted."""
    cfg = EmailCfg(host="127.0.0.1", port=smtp_starttls.port, tls="starttls", username=USER,
                   password=SecretStr(PASSWORD))
    channel = EmailChannel(cfg, renderer, tls_context=smtp_starttls.client_tls)  # type: ignore[arg-type]
    await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    [received] = smtp_starttls.handler.messages
    assert received.authenticated


async def test_wrong_password_is_permanent(smtp_starttls: SMTPStandIn, renderer: Renderer) -> None:
    """A refused login (535) is permanent and the error never contains the password."""
    cfg = EmailCfg(host="127.0.0.1", port=smtp_starttls.port, tls="starttls", username=USER,
                   password=SecretStr("hunter2-wrong"))
    channel = EmailChannel(cfg, renderer, tls_context=smtp_starttls.client_tls)  # type: ignore[arg-type]
    with pytest.raises(PermanentDeliveryError, match="535") as info:
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert "hunter2" not in str(info.value)
    assert smtp_starttls.handler.data_calls == 0


async def test_untrusted_certificate_is_not_accepted(
    smtp_starttls: SMTPStandIn, renderer: Renderer
) -> None:
    """Without the test CA in the trust store the TLS handshake fails and nothing is sent."""
    cfg = EmailCfg(host="127.0.0.1", port=smtp_starttls.port, tls="starttls", username=USER,
                   password=SecretStr(PASSWORD))
    channel = EmailChannel(cfg, renderer)  # type: ignore[arg-type]
    with pytest.raises(RetryableDeliveryError):
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert smtp_starttls.handler.data_calls == 0


async def test_implicit_tls_delivers(smtp_implicit: SMTPStandIn, renderer: Renderer) -> None:
    """tls=implicit speaks TLS from the first byte and delivers; a plain client cannot."""
    cfg = EmailCfg(host="127.0.0.1", port=smtp_implicit.port, tls="implicit")
    channel = EmailChannel(cfg, renderer, tls_context=smtp_implicit.client_tls)  # type: ignore[arg-type]
    await channel.send(sample_alert(lang="ar"), "desk@example.org", idempotency_key="k")
    [received] = smtp_implicit.handler.messages
    assert parse(received.content)["Subject"].endswith(sample_alert(lang="ar").title)


async def test_connection_refused_is_retryable(renderer: Renderer) -> None:
    """Nobody listening on the port is a retryable failure naming the server."""
    channel = EmailChannel(EmailCfg(host="127.0.0.1", port=free_port()), renderer)  # type: ignore[arg-type]
    with pytest.raises(RetryableDeliveryError, match=r"127\.0\.0\.1"):
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")


async def test_server_that_never_greets_times_out(renderer: Renderer) -> None:
    """A server that accepts but never says 220 costs at most the configured timeout."""
    finished = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # say nothing; wait for the client to give up and hang up
        writer.close()
        finished.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = EmailChannel(EmailCfg(host="127.0.0.1", port=port, timeout=0.5), renderer)  # type: ignore[arg-type]
    started = time.monotonic()
    try:
        with pytest.raises(RetryableDeliveryError):
            await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    finally:
        server.close()
    assert time.monotonic() - started < 5.0  # 0.5 s timeout; slack for a loaded CI machine
    await asyncio.wait_for(finished.wait(), 5)
    await server.wait_closed()


async def test_slow_data_hits_overall_timeout(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """A server that stalls after DATA is cut off by the overall timeout, as retryable."""
    smtp_plain.handler.data_delay = 1.5
    channel = plain(smtp_plain, renderer, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RetryableDeliveryError, match=r"within 0\.5 s|[Tt]imed out"):
        await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert time.monotonic() - started < 1.4
    await asyncio.sleep(1.2)  # let the server finish its stalled reply before it stops
    assert not smtp_plain.handler.messages or smtp_plain.handler.data_calls == 1


async def test_line_breaks_in_title_cannot_inject_headers(
    smtp_plain: SMTPStandIn, renderer: Renderer
) -> None:
    """A title with CR/LF and a fake Bcc header arrives as one subject line, no extra header."""
    alert = sample_alert().model_copy(update={"title": "Strike\r\nBcc: spy@evil.example\nX: y"})
    await plain(smtp_plain, renderer).send(alert, "desk@example.org", idempotency_key="k")
    [received] = smtp_plain.handler.messages
    msg = parse(received.content)
    assert msg["Bcc"] is None and msg["X"] is None
    assert "Bcc: spy@evil.example" in msg["Subject"] and "\n" not in msg["Subject"]
    assert received.rcpt_tos == ["desk@example.org"]


async def test_built_from_the_config_model(smtp_plain: SMTPStandIn, renderer: Renderer) -> None:
    """build_channel accepts the real config.EmailChannel model and lists its recipients."""
    config = pytest.importorskip("monitor.config")
    cfg = config.EmailChannel(type="email", name="ops", host="127.0.0.1", port=smtp_plain.port,
                              tls="none", sender="spillover@example.org",
                              recipients="a@example.org, b@example.org")
    channel = build_channel(cfg, renderer)
    assert channel.name == "ops" and channel.recipients() == ["a@example.org", "b@example.org"]
    await channel.send(sample_alert(), "a@example.org", idempotency_key="k")
    assert len(smtp_plain.handler.messages) == 1
    await channel.close()
