"""Failing servers and crashes: Redis outages under the running daemon, SIGTERM mid-send, SMTP
drops, an alert that always fails, and the wall clock jumping an hour."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from aiosmtpd.controller import Controller
from pydantic import SecretStr

import tests.conftest
from monitor.channels.email import EmailChannel
from monitor.channels.slack import SlackChannel
from monitor.clock import SystemClock
from monitor.dispatch import Dispatcher
from monitor.errors import RetryableDeliveryError
from monitor.models import Alert, DeliveryStatus
from monitor.render import Renderer, sample_alert
from monitor.state.sqlite import SQLiteStore
from tests.channels.conftest import EmailCfg, Recorder, SlackCfg
from tests.clock import ManualClock
from tests.conftest import RedisServer, free_port
from tests.servers import LoopbackHTTPServer, Reply
from tests.stack import ROOT, Stack, make_stack, rss, wait_for
from tests.test_app import STORY_AR, STORY_EN_2, STORY_LATE

HOOK = "/services/T0SECRET1/B0SECRET2/XyZsEcReTtOkEn42"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from make_stack(tmp_path)


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(ROOT / "alerts")


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_daemon_survives_redis_outage_hang_and_restart(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Redis killed, then restarted on the same data, then frozen (SIGSTOP) past the socket
    timeout, the daemon stays up, logs the outage, and alerts on feeds added after each recovery;
    SIGTERM still ends it cleanly."""
    data = tmp_path / "redis-data"
    data.mkdir()
    persistent = ("--appendonly", "yes", "--appendfsync", "always")
    redis = RedisServer(data, *persistent)
    try:
        stack.set_feeds({"daily": rss([STORY_EN_2])})
        proc = stack.start("run", "--config", "config", SPILLOVER_STATE_URL=redis.url)
        assert wait_for(lambda: len(stack.emails()) >= 1, 120), stack.log_of(0)[-3000:]

        redis.proc.kill()
        redis.proc.wait()
        time.sleep(3)
        assert proc.poll() is None, stack.log_of(0)[-3000:]
        monkeypatch.setattr(tests.conftest, "free_port", lambda: redis.port)
        redis = RedisServer(data, *persistent)
        stack.set_feeds({"daily": rss([STORY_EN_2]), "late": rss([STORY_LATE])})
        assert wait_for(lambda: len(stack.emails()) >= 2, 60), stack.log_of(0)[-3000:]

        os.kill(redis.proc.pid, signal.SIGSTOP)
        time.sleep(7)  # past RedisStore's 5 s socket timeout
        os.kill(redis.proc.pid, signal.SIGCONT)
        assert proc.poll() is None, stack.log_of(0)[-3000:]
        stack.set_feeds({"daily": rss([STORY_EN_2]), "late": rss([STORY_LATE]),
                         "arabic": rss([STORY_AR], encoding="cp1256", declare=False)})
        assert wait_for(lambda: len(stack.emails()) >= 3, 60), stack.log_of(0)[-3000:]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if redis.proc.poll() is None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.stop()
    log = stack.log_of(0)
    assert "unreachable" in log and log.count("shutdown_complete") == 1
    subjects = [str(m["X-Spillover-Alert"]) for m in stack.emails()]
    assert len(subjects) == len(set(subjects)) == 3  # versions 1, 2, 3 of one story, once each


def test_redis_down_at_start_fails_fast_and_clearly(stack: Stack) -> None:
    """Starting against a Redis nobody listens on exits non-zero within seconds, naming the
    masked address, before loading the model."""
    stack.set_feeds({"daily": rss([STORY_EN_2])})
    url = f"redis://:pa55word@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = stack.run("run", "--once", "--config", "config", SPILLOVER_STATE_URL=url, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 20
    assert "unreachable" in done.stderr and "pa55word" not in done.stderr + done.stdout
    assert "model_loading" not in done.stderr and not stack.emails()


async def test_sigterm_mid_send_then_restart_delivers(tmp_path: Path, renderer: Renderer) -> None:
    """SIGTERM while an SMTP server is still taking DATA: the daemon's shutdown (cancel, bounded
    drain) leaves the delivery pending, and a restarted replica delivers it exactly once."""
    recorder = Recorder()
    recorder.data_delay = 30.0
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    channel = EmailChannel(EmailCfg(host="127.0.0.1", port=port, timeout=60.0), renderer)  # type: ignore[arg-type]
    try:
        store = SQLiteStore(tmp_path / "state.sqlite3")
        await store.open()
        first = Dispatcher(store, {"mail": channel}, clock=SystemClock(), owner="replica-a")
        assert await first.submit(sample_alert(), ["mail"]) == 1
        stop = asyncio.Event()
        task = asyncio.create_task(first.run_forever(stop))
        for _ in range(100):
            if recorder.data_calls:
                break
            await asyncio.sleep(0.05)
        assert recorder.data_calls == 1
        stop.set()  # what SIGTERM does in run_daemon: stop, cancel the loops, drain briefly
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        summary = await first.drain(time.monotonic() + 1)
        [left] = await store.outbox_list()
        await store.close()
        assert summary.pending == 1 and left.status is DeliveryStatus.PENDING
        assert not recorder.messages

        recorder.data_delay = 0.0
        store = SQLiteStore(tmp_path / "state.sqlite3")
        await store.open()
        later = LaterClock(timedelta(seconds=61))  # the cancelled send's 60 s lease has run out
        second = Dispatcher(store, {"mail": channel}, clock=later, owner="replica-b")
        summary = await second.drain(time.monotonic() + 10)
        [done] = await store.outbox_list()
        await store.close()
    finally:
        controller.stop()
    assert summary.delivered == 1 and done.status is DeliveryStatus.DONE
    assert len(recorder.messages) == 1


class LaterClock:
    """The system clock shifted by a fixed offset."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


async def test_smtp_connection_dropped_after_body_is_retried(
    renderer: Renderer,
) -> None:
    """A server that swallows the message body and hangs up without a reply gives a retryable
    error (it may or may not have the message: at-least-once retries it)."""
    bodies: list[bytes] = []

    async def drop_after_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                bodies.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.transport.abort()  # hang up: no 250, no 4xx
                return
            writer.write(b"250-mx.test\r\n250 8BITMIME\r\n" if verb in (b"EHLO", b"HELO")
                         else b"250 OK\r\n")

    server = await asyncio.start_server(drop_after_body, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = EmailChannel(EmailCfg(host="127.0.0.1", port=port, timeout=5.0), renderer)  # type: ignore[arg-type]
    try:
        with pytest.raises(RetryableDeliveryError, match=r"127\.0\.0\.1"):
            await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    finally:
        server.close()
    assert len(bodies) == 1 and b"Subject:" in bodies[0]


async def test_alert_that_always_fails_is_dead_lettered_and_the_operator_told(
    tmp_path: Path, renderer: Renderer, http_server: LoopbackHTTPServer,
) -> None:
    """A webhook answering 500 for ever is tried max_attempts times, then dead-lettered with one
    error log line naming channel, recipient and alert, and no webhook secret anywhere."""
    http_server.routes[HOOK] = Reply(500, b"internal error")
    slack = SlackChannel(SlackCfg(webhook_url=SecretStr(http_server.url(HOOK))), renderer)  # type: ignore[arg-type]
    store = SQLiteStore(tmp_path / "state.sqlite3")
    await store.open()
    alert = sample_alert()
    try:
        dispatcher = Dispatcher(store, {"slack": slack}, clock=SystemClock(), owner="t",
                                max_attempts=3, base_delay=0.05, max_delay=0.1)
        await dispatcher.submit(alert, ["slack"])
        with structlog.testing.capture_logs() as logs:
            summary = await dispatcher.drain(time.monotonic() + 10)
        [dead] = await store.outbox_list("dead")
    finally:
        await slack.close()
        await store.close()
    assert (summary.retried, summary.dead, summary.pending) == (2, 1, 0)
    assert len(http_server.hits(HOOK)) == 3
    assert "gave up after 3 attempts" in dead.last_error
    [told] = [e for e in logs if e["event"] == "delivery_dead"]
    assert told["log_level"] == "error" and told["channel"] == "slack"
    assert told["recipient"] == "" and told["alert"] == alert.id and "500" in told["reason"]
    everything = json.dumps(logs, default=str) + dead.last_error
    assert "XyZsEcReTtOkEn42" not in everything and "T0SECRET1" not in everything


class FlakyChannel:
    """A core fake: fails with 429 (retry after 2 minutes) the first time, then accepts."""

    name = "slack"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.calls = 0

    def recipients(self) -> list[str]:
        return [""]

    async def send(self, alert: Alert, recipient: str, *, idempotency_key: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RetryableDeliveryError("slack", "HTTP 429", retry_after=120)
        self.sent.append(idempotency_key)

    async def close(self) -> None:
        pass


async def dispatcher_on_sqlite(tmp_path: Path, clock: ManualClock
                               ) -> tuple[Dispatcher, FlakyChannel, SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.sqlite3")
    await store.open()
    channel = FlakyChannel()
    return Dispatcher(store, {"slack": channel}, clock=clock, owner="t"), channel, store  # type: ignore[dict-item]


async def test_clock_jumping_forward_an_hour_sends_what_is_due(tmp_path: Path) -> None:
    """After the wall clock leaps an hour ahead, a retry due in two minutes goes out once and a
    new alert is sent at once."""
    clock = ManualClock()
    dispatcher, channel, store = await dispatcher_on_sqlite(tmp_path, clock)
    try:
        await dispatcher.submit(sample_alert(), ["slack"])
        assert (await dispatcher.run_once()).retried == 1
        assert (await dispatcher.run_once()).attempted == 0  # not due for two minutes
        clock.at += timedelta(hours=1)
        assert (await dispatcher.run_once()).delivered == 1
        newer = sample_alert().model_copy(update={"id": "another-story"})
        await dispatcher.submit(newer, ["slack"])
        assert (await dispatcher.run_once()).delivered == 1
        assert (await dispatcher.run_once()).attempted == 0
    finally:
        await store.close()
    assert len(channel.sent) == len(set(channel.sent)) == 2


async def test_clock_jumping_back_an_hour_does_not_hold_alerts(tmp_path: Path) -> None:
    """An alert queued just before the wall clock steps back an hour is still sent at once."""
    clock = ManualClock()
    dispatcher, channel, store = await dispatcher_on_sqlite(tmp_path, clock)
    channel.calls = 1  # no scripted failure: accept at once
    try:
        await dispatcher.submit(sample_alert(), ["slack"])
        clock.at -= timedelta(hours=1)
        summary = await dispatcher.run_once()
    finally:
        await store.close()
    assert summary.delivered == 1 and len(channel.sent) == 1
