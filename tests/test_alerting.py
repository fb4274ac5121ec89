"""When alerts go out: quiet hours, info digests and superseded versions, through real SMTP.

The Dispatcher runs on the real SQLiteStore with the real email channel against aiosmtpd;
only the wall clock is injected.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from monitor.channels.email import EmailChannel
from monitor.config import QuietHours
from monitor.dispatch import Dispatcher
from monitor.models import Alert, DeliveryStatus, Severity, Source
from monitor.render import Renderer
from monitor.state.sqlite import SQLiteStore
from monitor.timing import Timing, combine, digest_due, quiet_end
from tests.channels.conftest import EmailCfg, Recorder
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
NIGHT = QuietHours(start="22:00", end="06:00", tz="UTC")
BAGHDAD_NIGHT = QuietHours(start="22:00", end="06:00", tz="Asia/Baghdad")  # UTC+3
OFFICE = QuietHours(start="09:00", end="17:00", tz="UTC")
DESK = ["desk@example.org", "field@example.org"]


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """A UTC time in May 2024."""
    return datetime(2024, 5, day, hh, mm, tzinfo=UTC)


class StepClock:
    """Wall time that moves only when told; monotonic time is real."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


def alert(key: str, severity: Severity, *, title: str = "", version: int = 1,
          lang: str = "en") -> Alert:
    """An alert of one story with one source named after it."""
    title = title or f"Story {key}"
    source = Source(article_id=f"{key}-a", feed=f"feed-{key}", title=title,
                    link=f"https://news.test/{key}", lang=lang)
    return Alert(id=f"levant-{key}", version=version, watchlist="levant", severity=severity,
                 title=title, lang=lang, score=0.55, regions=("iraq",), sources=(source,),
                 created=at(1, 12))


@dataclass
class Desk:
    """aiosmtpd, the email channel pointed at it, and the state file."""

    smtp: Recorder
    channel: EmailChannel
    path: Path
    port: int

    def mails(self) -> list[EmailMessage]:
        return [email.message_from_bytes(m.content, policy=email.policy.default)
                for m in self.smtp.messages]

    def subjects(self) -> list[str]:
        return sorted(str(m["Subject"]) for m in self.mails())


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    """A real SMTP server and an email channel with two recipients."""
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    channel = EmailChannel(EmailCfg("127.0.0.1", port, recipients=DESK),
                           Renderer(ROOT / "alerts"))
    yield Desk(recorder, channel, tmp_path / "state.sqlite3", port)
    controller.stop()


@pytest.fixture
async def stores(desk: Desk) -> AsyncIterator[list[SQLiteStore]]:
    """Opened SQLite stores on one file (each a process or replica); closed at the end."""
    opened: list[SQLiteStore] = []
    yield opened
    for store in opened:
        await store.close()


async def dispatcher(desk: Desk, stores: list[SQLiteStore], clock: StepClock,
                     owner: str = "a", **kw: int) -> Dispatcher:
    """A Dispatcher on a fresh connection to the shared state file (a start or a replica)."""
    store = SQLiteStore(desk.path)
    await store.open()
    stores.append(store)
    return Dispatcher(store, {"mail": desk.channel}, clock=clock, owner=owner, **kw)


@pytest.mark.parametrize(("quiet", "now", "end"), [
    (NIGHT, at(1, 23, 30), at(2, 6)),  # before midnight: ends tomorrow
    (NIGHT, at(2, 2), at(2, 6)),  # after midnight: ends today
    (NIGHT, at(1, 22), at(2, 6)),  # the start is inside
    (NIGHT, at(2, 6), None),  # the end is outside
    (NIGHT, at(1, 12), None),
    (OFFICE, at(1, 16, 59), at(1, 17)),  # a window within one day
    (OFFICE, at(1, 8), None),
    (QuietHours(start="09:00", end="09:00", tz="UTC"), at(1, 9), None),  # start == end: empty
    (BAGHDAD_NIGHT, at(1, 20), at(2, 3)),  # 23:00 in Baghdad, quiet until 06:00 there
    (BAGHDAD_NIGHT, at(1, 18), None),  # 21:00 in Baghdad
])
def test_quiet_end_crosses_midnight_in_the_watchlist_zone(
        quiet: QuietHours, now: datetime, end: datetime | None) -> None:
    """quiet_end is the end of the window ``now`` is in (start inclusive, end exclusive)."""
    assert quiet_end(quiet, now) == end


@pytest.mark.parametrize(("period", "zone", "now", "due"), [
    ("hourly", "UTC", at(1, 12, 34), at(1, 13)),
    ("hourly", "UTC", at(1, 12), at(1, 13)),
    ("hourly", "Asia/Kolkata", at(1, 12, 34), at(1, 13, 30)),  # UTC+5:30: local full hours
    ("daily", "UTC", at(1, 7, 59), at(1, 8)),
    ("daily", "UTC", at(1, 8), at(2, 8)),
    ("daily", "Asia/Baghdad", at(1, 6), at(2, 5)),  # 09:00 there: next 08:00 there
])
def test_digest_period_ends_at_the_next_hour_or_eight(
        period: str, zone: str, now: datetime, due: datetime) -> None:
    """An hourly digest goes at the next full hour, a daily one at the next 08:00, local time."""
    tz = QuietHours(start="00:00", end="00:00", tz=zone).zone
    assert digest_due(period, tz, now) == due


@pytest.mark.parametrize(("timing", "severity", "now", "plan"), [
    (Timing(NIGHT), Severity.CRITICAL, at(1, 23), (at(1, 23), False)),
    (Timing(NIGHT), Severity.WARNING, at(1, 23), (at(2, 6), False)),
    (Timing(NIGHT), Severity.INFO, at(1, 23), (at(2, 6), False)),
    (Timing(NIGHT), Severity.WARNING, at(1, 12), (at(1, 12), False)),
    (Timing(None, "hourly"), Severity.INFO, at(1, 12, 10), (at(1, 13), True)),
    (Timing(None, "hourly"), Severity.WARNING, at(1, 12, 10), (at(1, 12, 10), False)),
    (Timing(NIGHT, "hourly"), Severity.INFO, at(1, 21, 30), (at(2, 6), True)),  # 22:00 is quiet
    (Timing(NIGHT, "daily"), Severity.INFO, at(1, 12), (at(2, 8), True)),
])
def test_timing_plan(timing: Timing, severity: Severity, now: datetime,
                     plan: tuple[datetime, bool]) -> None:
    """Critical goes now; others wait out quiet hours; info goes to the digest if there is one."""
    assert timing.plan(severity, now) == plan


async def test_quiet_hours_delay_non_critical_and_pass_critical(
        desk: Desk, stores: list[SQLiteStore]) -> None:
    """At 23:30 a critical alert is mailed at once; a warning waits until 06:00, past midnight."""
    clock = StepClock(at(1, 23, 30))
    sender = await dispatcher(desk, stores, clock)
    timing = Timing(NIGHT)
    await sender.submit(alert("w", Severity.WARNING), ["mail"], timing)
    await sender.submit(alert("c", Severity.CRITICAL), ["mail"], timing)
    started = time.monotonic()
    summary = await sender.drain(time.monotonic() + 30)
    assert time.monotonic() - started < 5  # a drain does not wait for deferred alerts
    assert (summary.delivered, summary.pending, summary.deferred) == (2, 0, 2)
    assert desk.subjects() == ["[CRITICAL] Story c"] * 2
    clock.at = at(2, 5, 59)
    assert (await sender.run_once()).attempted == 0
    clock.at = at(2, 6)
    assert (await sender.run_once()).delivered == 2
    assert desk.subjects() == ["[CRITICAL] Story c"] * 2 + ["[WARNING] Story w"] * 2


async def test_a_newer_version_supersedes_a_deferred_one(
        desk: Desk, stores: list[SQLiteStore]) -> None:
    """Two versions of one story held by quiet hours give one message: the newer version."""
    clock = StepClock(at(1, 23))
    sender = await dispatcher(desk, stores, clock)
    await sender.submit(alert("s", Severity.WARNING, version=1), ["mail"], Timing(NIGHT))
    await sender.submit(alert("s", Severity.WARNING, version=2), ["mail"], Timing(NIGHT))
    clock.at = at(2, 6)
    await sender.drain(time.monotonic() + 30)
    assert [m["X-Spillover-Alert"] for m in desk.mails()] == ["levant-s v2"] * 2
    assert all(d.status is DeliveryStatus.DONE for d in await sender.store.outbox_list())


async def test_info_digest_is_one_message_per_recipient_and_survives_a_restart(
        desk: Desk, stores: list[SQLiteStore]) -> None:
    """Info alerts wait for the hour, then one digest per recipient lists them all, once."""
    clock = StepClock(at(1, 12, 10))
    first = await dispatcher(desk, stores, clock)
    hourly = Timing(None, "hourly")
    await first.submit(alert("a", Severity.INFO), ["mail"], hourly)
    clock.at = at(1, 12, 40)
    await first.submit(alert("b", Severity.INFO, title="قصف قرب الحدود", lang="ar"), ["mail"],
                       hourly)
    await first.submit(alert("c", Severity.INFO), ["mail"], hourly)
    await first.submit(alert("w", Severity.WARNING), ["mail"], hourly)
    assert (await first.drain(time.monotonic() + 30)).deferred == 6
    assert desk.subjects() == ["[WARNING] Story w"] * 2
    clock.at = at(1, 13)
    restarted = await dispatcher(desk, stores, clock, owner="b")  # same state, new process
    assert (await restarted.drain(time.monotonic() + 30)).delivered == 6
    digests = [m for m in desk.mails() if "Digest" in str(m["Subject"])]
    assert sorted(str(m["To"]) for m in digests) == sorted(DESK)
    for mail in digests:
        assert str(mail["Subject"]) == "[INFO] Digest: 3 alerts"
        body = mail.get_body(preferencelist=("plain",))
        text = body.get_content() if body else ""
        assert all(t in text for t in ("Story a", "قصف قرب الحدود", "Story c", "news.test/b"))
    assert (await restarted.drain(time.monotonic() + 5)).attempted == 0
    assert len(desk.mails()) == 4


async def test_replicas_send_a_digest_once(desk: Desk, stores: list[SQLiteStore]) -> None:
    """Two dispatchers that each claimed part of one digest send it once between them."""
    clock = StepClock(at(1, 12, 10))
    # One recipient, one delivery per pass each: both replicas hold members of one digest.
    desk.channel = EmailChannel(EmailCfg("127.0.0.1", desk.port),
                                Renderer(ROOT / "alerts"))
    one = await dispatcher(desk, stores, clock, owner="one", batch=1)
    two = await dispatcher(desk, stores, clock, owner="two", batch=1)
    for key in "abcd":
        await one.submit(alert(key, Severity.INFO), ["mail"], Timing(None, "daily"))
    clock.at = at(2, 8)
    for _ in range(10):
        await asyncio.gather(one.run_once(), two.run_once())
    assert [str(m["Subject"]) for m in desk.mails()] == ["[INFO] Digest: 4 alerts"]
    pending = await one.store.outbox_list("pending")
    assert pending == [] and len(await one.store.outbox_list("done")) == 4


def test_combine_keeps_the_newest_version_and_every_source() -> None:
    """A digest lists each story once (its newest version) and each source once."""
    from monitor.dispatch import expand_deliveries

    clock = StepClock(at(1, 12))
    channels = {"mail": _OneRecipient()}
    deliveries = [d for a in (alert("a", Severity.INFO), alert("a", Severity.INFO, version=2),
                              alert("b", Severity.INFO))
                  for d in expand_deliveries(a, channels, ["mail"], clock,  # type: ignore[arg-type]
                                             Timing(None, "hourly"))]
    digest = combine(deliveries, at(1, 13))
    assert digest.title == "Digest: 2 alerts" and digest.severity is Severity.INFO
    assert [s.article_id for s in digest.sources] == ["a-a", "b-a"]
    assert digest.summary.count("Story a") == 1
    assert all(d.next_at == at(1, 13) and "#digest@20240501T130000Z" in d.id
               for d in deliveries)


class _OneRecipient:
    name = "mail"

    def recipients(self) -> list[str]:
        return ["desk@example.org"]
