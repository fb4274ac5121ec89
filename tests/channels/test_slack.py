"""The Slack channel against a loopback webhook: status mapping, Retry-After, escaping, secrecy."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import structlog
from pydantic import SecretStr

from monitor.channels.slack import SlackChannel, parse_retry_after
from monitor.clock import SystemClock
from monitor.dispatch import Dispatcher
from monitor.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from monitor.models import Source
from monitor.render import Renderer, sample_alert
from tests.channels.conftest import MemoryOutbox, SlackCfg
from tests.conftest import free_port
from tests.servers import LoopbackHTTPServer, Reply

HOOK = "/services/T0SECRET1/B0SECRET2/XyZsEcReTtOkEn42"
SECRET_PARTS = ("T0SECRET1", "B0SECRET2", "XyZsEcReTtOkEn42")


def channel_for(
    server: LoopbackHTTPServer, renderer: Renderer, timeout: float = 5.0
) -> SlackChannel:
    cfg = SlackCfg(webhook_url=SecretStr(server.url(HOOK)), timeout=timeout)
    return SlackChannel(cfg, renderer)  # type: ignore[arg-type]


def assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, f"webhook secret leaked: {text!r}"


def error_text(exc: BaseException) -> str:
    """The error and every exception chained to it, as a traceback would print them."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(f"{seen!s} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return " ".join(parts)


async def test_posts_block_kit_with_sources(
    http_server: LoopbackHTTPServer, renderer: Renderer
) -> None:
    """A 200 delivers one POST of Block Kit JSON with header, sources, links and a text fallback."""
    http_server.routes[HOOK] = Reply(200, b"ok")
    channel = channel_for(http_server, renderer)
    alert = sample_alert()
    await channel.send(alert, "", idempotency_key="k")
    await channel.close()
    [request] = http_server.hits(HOOK)
    payload = json.loads(request.body)
    assert request.method == "POST" and request.headers["Content-Type"] == "application/json"
    assert payload["text"] and payload["blocks"][0]["type"] == "header"
    assert "CRITICAL" in payload["blocks"][0]["text"]["text"]
    body = json.dumps(payload, ensure_ascii=False)
    for source in alert.sources:
        assert f"<{source.link}|" in body and source.feed in body
    for signal in alert.signals:
        assert f"{signal.name} {signal.score:.2f}" in body
    assert "العربية" in body and "Iraq" in body and alert.reason in body


async def test_arabic_titles_are_isolated_right_to_left(
    http_server: LoopbackHTTPServer, renderer: Renderer
) -> None:
    """An Arabic title is wrapped in U+2067…U+2069 so it reads RTL inside Slack's LTR lines."""
    http_server.routes[HOOK] = Reply(200, b"ok")
    alert = sample_alert(lang="ar")
    channel = channel_for(http_server, renderer)
    await channel.send(alert, "", idempotency_key="k")
    await channel.close()
    payload = json.loads(http_server.hits(HOOK)[0].body)
    assert f"\u2067{alert.title}\u2069" in payload["blocks"][0]["text"]["text"]
    english = next(s for s in alert.sources if s.lang == "en")
    assert f"|{english.title}>" in json.dumps(payload, ensure_ascii=False)


async def test_injections_render_inert(http_server: LoopbackHTTPServer, renderer: Renderer) -> None:
    """Feed text with <!channel>, forged links and & is escaped everywhere in the posted JSON."""
    http_server.routes[HOOK] = Reply(200, b"ok")
    evil = "<!channel> Breaking <https://evil.example|click here> & more"
    source = Source(article_id="x", feed="<!here>", title=evil,
                    link="https://news.example/a|<!everyone>", lang="en")
    alert = sample_alert().model_copy(update={"title": evil, "summary": evil, "reason": evil,
                                              "keywords": ("<@U123>",), "sources": (source,)})
    channel = channel_for(http_server, renderer)
    await channel.send(alert, "", idempotency_key="k")
    await channel.close()
    body = json.dumps(json.loads(http_server.hits(HOOK)[0].body), ensure_ascii=False)
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<https://evil.example|", "<@U123>"):
        assert raw not in body
    assert "&lt;!channel&gt;" in body and "&amp; more" in body
    assert "<https://news.example/a%7C%3C!everyone%3E|" in body


async def test_429_is_retryable_with_retry_after(
    http_server: LoopbackHTTPServer, renderer: Renderer
) -> None:
    """429 with Retry-After: 2 raises Retryable carrying retry_after=2."""
    http_server.routes[HOOK] = Reply(429, b"rate_limited", {"Retry-After": "2"})
    channel = channel_for(http_server, renderer)
    with pytest.raises(RetryableDeliveryError) as info:
        await channel.send(sample_alert(), "", idempotency_key="k")
    await channel.close()
    assert info.value.retry_after == 2.0
    assert_no_secret(error_text(info.value))


async def test_retry_waits_at_least_retry_after_in_wall_time(
    http_server: LoopbackHTTPServer, renderer: Renderer
) -> None:
    """Through the outbox, 429 (Retry-After: 2) then 200 delivers once, no sooner than 2 s later."""
    stamps: list[float] = []

    def handler(_request: object) -> Reply:
        stamps.append(time.monotonic())
        return Reply(429, b"", {"Retry-After": "2"}) if len(stamps) == 1 else Reply(200, b"ok")

    http_server.routes[HOOK] = handler
    channel = channel_for(http_server, renderer)
    outbox = MemoryOutbox()
    dispatcher = Dispatcher(outbox, {"slack": channel}, clock=SystemClock(), owner="t",  # type: ignore[arg-type]
                            base_delay=0.01)
    await outbox.outbox_put(dispatcher.enqueue(sample_alert(), ["slack"]))
    summary = await dispatcher.drain(time.monotonic() + 10)
    await channel.close()
    assert (summary.delivered, summary.retried, summary.pending) == (1, 1, 0)
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 2.0
    [delivery] = outbox.items.values()
    assert delivery.attempts == 1 and "429" in delivery.last_error


async def test_500_then_200_delivers_once(
    http_server: LoopbackHTTPServer, renderer: Renderer
) -> None:
    """A 500 is retried and the following 200 delivers exactly once."""
    http_server.routes[HOOK] = [Reply(500, b"oops"), Reply(200, b"ok")]
    channel = channel_for(http_server, renderer)
    outbox = MemoryOutbox()
    dispatcher = Dispatcher(outbox, {"slack": channel}, clock=SystemClock(), owner="t",  # type: ignore[arg-type]
                            base_delay=0.05)
    await outbox.outbox_put(dispatcher.enqueue(sample_alert(), ["slack"]))
    summary = await dispatcher.drain(time.monotonic() + 10)
    await channel.close()
    assert (summary.delivered, summary.retried, summary.dead) == (1, 1, 0)
    assert len(http_server.hits(HOOK)) == 2


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_client_errors_are_permanent(
    http_server: LoopbackHTTPServer, renderer: Renderer, status: int
) -> None:
    """400/403/404/410 are permanent, name the status, and never reveal the webhook URL."""
    http_server.routes[HOOK] = Reply(status, b"no_service")
    channel = channel_for(http_server, renderer)
    with pytest.raises(PermanentDeliveryError, match=f"HTTP {status}") as info:
        await channel.send(sample_alert(), "", idempotency_key="k")
    await channel.close()
    assert_no_secret(error_text(info.value))
    assert "/services/T…/B…/…" in str(info.value)


def test_retry_after_forms() -> None:
    """Retry-After: seconds, HTTP-date, missing (30 s), garbage (30 s), huge (1 h), past (0)."""
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert parse_retry_after(None, now) == 30.0
    assert parse_retry_after("soon", now) == 30.0
    assert parse_retry_after("999999", now) == 3600.0
    assert parse_retry_after(format_datetime(now + timedelta(days=3), usegmt=True), now) == 3600.0
    assert parse_retry_after(format_datetime(now - timedelta(minutes=5), usegmt=True), now) == 0.0


@pytest.mark.parametrize(("header", "low", "high"), [
    ({}, 30.0, 30.0),
    ({"Retry-After": "86400"}, 3600.0, 3600.0),
    ("date", 25.0, 31.0),
])
async def test_retry_after_from_server(
    http_server: LoopbackHTTPServer, renderer: Renderer, header: object, low: float, high: float
) -> None:
    """A real 429 with a missing, huge or HTTP-date Retry-After gives a clamped retry_after."""
    if header == "date":
        header = {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=30),
                                                 usegmt=True)}
    assert isinstance(header, dict)
    http_server.routes[HOOK] = Reply(429, b"", header)
    channel = channel_for(http_server, renderer)
    with pytest.raises(RetryableDeliveryError) as info:
        await channel.send(sample_alert(), "", idempotency_key="k")
    await channel.close()
    assert info.value.retry_after is not None and low <= info.value.retry_after <= high


async def test_timeout_is_retryable(http_server: LoopbackHTTPServer, renderer: Renderer) -> None:
    """A webhook slower than the timeout is retryable and the call returns promptly."""
    http_server.routes[HOOK] = Reply(200, b"ok", delay=1.5)
    channel = channel_for(http_server, renderer, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RetryableDeliveryError) as info:
        await channel.send(sample_alert(), "", idempotency_key="k")
    await channel.close()
    assert time.monotonic() - started < 1.2
    assert_no_secret(error_text(info.value))


async def test_webhook_url_never_logged_or_raised(
    http_server: LoopbackHTTPServer, renderer: Renderer, caplog: pytest.LogCaptureFixture
) -> None:
    """Across success, 404, 500 and a dead server, no log line or error carries the secret."""
    caplog.set_level(logging.DEBUG)
    http_server.routes[HOOK] = [Reply(200, b"ok"), Reply(404, b"no_service"),
                                Reply(500, b"x"), Reply(200, b"ok")]
    channel = channel_for(http_server, renderer)
    dead = SlackChannel(SlackCfg(webhook_url=SecretStr(f"http://127.0.0.1:{free_port()}{HOOK}")),  # type: ignore[arg-type]
                        renderer)
    errors: list[DeliveryError] = []
    with structlog.testing.capture_logs() as logs:
        for target in (channel, channel, channel, dead):
            try:
                await target.send(sample_alert(), "", idempotency_key="k")
            except DeliveryError as exc:
                errors.append(exc)
        outbox = MemoryOutbox()
        dispatcher = Dispatcher(outbox, {"slack": dead}, clock=SystemClock(), owner="t",  # type: ignore[arg-type]
                                max_attempts=1)
        await outbox.outbox_put(dispatcher.enqueue(sample_alert(), ["slack"]))
        await dispatcher.run_once()
    await channel.close()
    await dead.close()
    assert len(errors) == 3 and any("httpx" in r.name for r in caplog.records)
    assert_no_secret(caplog.text + " ".join(r.getMessage() for r in caplog.records))
    assert_no_secret(json.dumps(logs, default=str))
    for exc in errors:
        assert_no_secret(error_text(exc))
    assert_no_secret(next(iter(outbox.items.values())).last_error)
