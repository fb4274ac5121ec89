"""The outbox dispatcher: expansion, delivery, backoff, dead-lettering, drain and the run loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from monitor.clock import SystemClock
from monitor.dispatch import Dispatcher, DispatchSummary
from monitor.errors import PermanentDeliveryError, RetryableDeliveryError
from monitor.models import Delivery, DeliveryStatus
from monitor.render import sample_alert
from tests.channels.conftest import MemoryOutbox

Outcome = Exception | None


class ScriptedChannel:
    """A channel that raises (or not) from a script; the last entry repeats."""

    def __init__(self, name: str, script: list[Outcome] | None = None,
                 recipients: list[str] | None = None) -> None:
        self.name = name
        self.script = script or [None]
        self._recipients = recipients or [""]
        self.calls: list[tuple[str, str, str]] = []

    def recipients(self) -> list[str]:
        return list(self._recipients)

    async def send(self, alert: object, recipient: str, *, idempotency_key: str) -> None:
        self.calls.append((getattr(alert, "id", ""), recipient, idempotency_key))
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if outcome is not None:
            raise outcome

    async def close(self) -> None:
        pass


class JumpClock:
    """Wall time that moves only when told; monotonic time is real."""

    def __init__(self) -> None:
        self.at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


def make(channels: list[ScriptedChannel], clock: object | None = None, **kw: object
         ) -> tuple[Dispatcher, MemoryOutbox]:
    outbox = MemoryOutbox()
    dispatcher = Dispatcher(outbox, {c.name: c for c in channels},  # type: ignore[arg-type]
                            clock=clock or JumpClock(), owner="test", **kw)  # type: ignore[arg-type]
    return dispatcher, outbox


async def queue(dispatcher: Dispatcher, outbox: MemoryOutbox, names: list[str]) -> list[Delivery]:
    deliveries = dispatcher.enqueue(sample_alert(), names)
    await outbox.outbox_put(deliveries)
    return deliveries


def test_enqueue_expands_channels_times_recipients() -> None:
    """One delivery per channel × recipient, keyed by Delivery.key; configs and repeats are fine."""
    mail = ScriptedChannel("mail", recipients=["a@x.org", "b@x.org"])
    dispatcher, _ = make([mail, ScriptedChannel("slack")])
    alert = sample_alert()
    deliveries = dispatcher.enqueue(alert, ["mail", SimpleNamespace(name="slack"), "mail", "nope"])
    assert [(d.channel, d.recipient) for d in deliveries] == [
        ("mail", "a@x.org"), ("mail", "b@x.org"), ("slack", "")]
    assert [d.id for d in deliveries] == [Delivery.key(alert, d.channel, d.recipient)
                                          for d in deliveries]


async def test_success_marks_done_with_idempotency_key() -> None:
    """A send that returns is recorded done; the channel got Delivery.id as its key."""
    slack = ScriptedChannel("slack")
    dispatcher, outbox = make([slack])
    [delivery] = await queue(dispatcher, outbox, ["slack"])
    summary = await dispatcher.run_once()
    assert summary == DispatchSummary(delivered=1)
    assert slack.calls == [(delivery.alert.id, "", delivery.id)]
    assert outbox.items[delivery.id].status is DeliveryStatus.DONE


async def test_retryable_schedules_backoff_honouring_retry_after() -> None:
    """A retryable failure is rescheduled no sooner than retry_after and counted as an attempt."""
    clock = JumpClock()
    slack = ScriptedChannel("slack", [RetryableDeliveryError("slack", "HTTP 429", retry_after=120)])
    dispatcher, outbox = make([slack], clock, base_delay=1.0)
    [delivery] = await queue(dispatcher, outbox, ["slack"])
    assert (await dispatcher.run_once()).retried == 1
    stored = outbox.items[delivery.id]
    assert stored.status is DeliveryStatus.PENDING and stored.attempts == 1
    assert stored.next_at >= clock.at + timedelta(seconds=120) and "429" in stored.last_error
    assert (await dispatcher.run_once()).attempted == 0  # not due yet
    clock.at += timedelta(seconds=121)
    assert (await dispatcher.run_once()).retried == 1


async def test_permanent_is_dead_lettered_with_a_clear_log_line() -> None:
    """A permanent failure is dead at once; the log names channel, recipient, alert and reason."""
    mail = ScriptedChannel("mail", [PermanentDeliveryError("mail", "550 no such user")],
                           recipients=["gone@x.org"])
    dispatcher, outbox = make([mail])
    [delivery] = await queue(dispatcher, outbox, ["mail"])
    with structlog.testing.capture_logs() as logs:
        assert (await dispatcher.run_once()).dead == 1
    assert outbox.items[delivery.id].status is DeliveryStatus.DEAD
    [line] = [e for e in logs if e["event"] == "delivery_dead"]
    assert line["log_level"] == "error" and line["channel"] == "mail"
    assert line["recipient"] == "gone@x.org" and line["alert"] == delivery.alert.id
    assert "550 no such user" in line["reason"]


async def test_gives_up_after_max_attempts() -> None:
    """The max_attempts-th retryable failure dead-letters the delivery instead of retrying."""
    clock = JumpClock()
    flaky = ScriptedChannel("slack", [RetryableDeliveryError("slack", "HTTP 503")])
    dispatcher, outbox = make([flaky], clock, max_attempts=3, base_delay=1.0)
    [delivery] = await queue(dispatcher, outbox, ["slack"])
    outcomes = []
    for _ in range(3):
        summary = await dispatcher.run_once()
        outcomes.append((summary.retried, summary.dead))
        clock.at += timedelta(hours=2)
    assert outcomes == [(1, 0), (1, 0), (0, 1)] and len(flaky.calls) == 3
    stored = outbox.items[delivery.id]
    assert stored.status is DeliveryStatus.DEAD and "gave up after 3 attempts" in stored.last_error


async def test_unknown_channel_and_crashing_channel() -> None:
    """A delivery for a removed channel is dead; a channel bug counts as a retryable attempt."""
    crash = ScriptedChannel("crash", [RuntimeError("bug")])
    dispatcher, outbox = make([crash])
    [gone] = await queue(dispatcher, outbox, ["crash"])
    outbox.items["orphan"] = gone.model_copy(update={"id": "orphan", "channel": "removed"})
    summary = await dispatcher.run_once()
    assert (summary.dead, summary.retried) == (1, 1)
    assert "not configured" in outbox.items["orphan"].last_error
    assert outbox.items[gone.id].last_error == "unexpected RuntimeError"


def test_backoff_is_exponential_jittered_and_capped() -> None:
    """Delays double per attempt within [half, full] of the ceiling, capped at max_delay."""
    dispatcher, _ = make([], base_delay=5.0, max_delay=60.0)
    for attempt, ceiling in [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (30, 60.0)]:
        delays = [dispatcher.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert dispatcher.backoff(1, retry_after=300.0) == 300.0


async def test_drain_delivers_retries_due_before_the_deadline() -> None:
    """drain waits for a retry due before the deadline and reports the final counts."""
    slack = ScriptedChannel("slack", [RetryableDeliveryError("slack", "HTTP 500"), None])
    dispatcher, outbox = make([slack], SystemClock(), base_delay=0.1)
    await queue(dispatcher, outbox, ["slack"])
    summary = await dispatcher.drain(time.monotonic() + 5)
    assert (summary.delivered, summary.retried, summary.dead, summary.pending) == (1, 1, 0, 0)


async def test_drain_stops_at_the_deadline_and_reports_pending() -> None:
    """A retry due after the deadline is left pending and drain returns promptly."""
    slack = ScriptedChannel("slack", [RetryableDeliveryError("slack", "HTTP 429", retry_after=60)])
    dispatcher, outbox = make([slack], SystemClock())
    await queue(dispatcher, outbox, ["slack"])
    started = time.monotonic()
    summary = await dispatcher.drain(time.monotonic() + 1)
    assert (summary.retried, summary.pending) == (1, 1)
    assert time.monotonic() - started < 0.5


async def test_run_forever_wakes_on_submit_and_stops() -> None:
    """The loop sends a submitted alert without waiting a poll interval, and stops on the event."""
    slack = ScriptedChannel("slack")
    dispatcher, outbox = make([slack], SystemClock(), poll_interval=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_forever(stop))
    await asyncio.sleep(0.05)
    assert await dispatcher.submit(sample_alert(), ["slack"]) == 1
    for _ in range(100):
        if slack.calls:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert len(slack.calls) == 1
    assert all(d.status is DeliveryStatus.DONE for d in outbox.items.values())


async def test_on_the_real_sqlite_store(tmp_path: Path) -> None:
    """Against SQLiteStore: one delivered, one retried then delivered, one dead, none twice."""
    sqlite = pytest.importorskip("monitor.state.sqlite")
    store = sqlite.SQLiteStore(tmp_path / "state.sqlite3")
    await store.open()
    try:
        good = ScriptedChannel("good")
        flaky = ScriptedChannel("flaky", [RetryableDeliveryError("flaky", "HTTP 500"), None])
        bad = ScriptedChannel("bad", [PermanentDeliveryError("bad", "HTTP 404")])
        dispatcher = Dispatcher(store, {c.name: c for c in (good, flaky, bad)},
                                clock=SystemClock(), owner="t", base_delay=0.1)
        assert await dispatcher.submit(sample_alert(), ["good", "flaky", "bad"]) == 3
        assert await dispatcher.submit(sample_alert(), ["good"]) == 0  # same key: kept once
        summary = await dispatcher.drain(time.monotonic() + 5)
        assert (summary.delivered, summary.retried, summary.dead, summary.pending) == (2, 1, 1, 0)
        assert (len(good.calls), len(flaky.calls), len(bad.calls)) == (1, 2, 1)
        [dead] = await store.outbox_list("dead")
        assert dead.channel == "bad" and "404" in dead.last_error
    finally:
        await store.close()
