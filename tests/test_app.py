"""End to end through real processes: loopback feeds, aiosmtpd, a Slack stand-in, the real model."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import FOUNDING, ROOT, Stack, make_stack, rss, wait_for

pytestmark = pytest.mark.timeout(600)

STORY_EN_2 = ("daily-1", "Drones and rockets target Ain al-Asad air base hosting US troops in Iraq",
              "Several drones and missiles struck near the Ain al-Asad airbase in western Iraq "
              "on Thursday evening, where US and coalition forces are stationed, security "
              "sources said. Blasts were heard inside the base.")
STORY_AR = ("ar-1", "هجوم بطائرات مسيرة وصواريخ على قاعدة عين الأسد الجوية غرب العراق",
            "استهدفت طائرات مسيرة وصواريخ قاعدة عين الأسد الجوية التي تستضيف قوات أمريكية في "
            "غرب العراق مساء الخميس، وسمع دوي انفجارات داخل القاعدة، وفق مصادر أمنية.")
STORY_LATE = ("late-1", "US forces at Ain al-Asad base in Iraq hit by drones and missiles",
              "Drones and missiles targeted the Ain al-Asad air base hosting American troops in "
              "Iraq's Anbar province, Iraqi security officials said on Thursday.")
SPORT = ("sport-1", "Liverpool thrash Everton as strikers run riot in derby attack",
         "Liverpool launched wave after wave of attacks and crushed their rivals 4-0.")
ECONOMY_AR = ("ar-2", "البنك المركزي يبقي أسعار الفائدة دون تغيير",
              "قرر البنك المركزي الإبقاء على أسعار الفائدة دون تغيير مع تراجع التضخم.")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A loopback deployment with three outlets reporting one story, a bad feed and noise."""
    yield from make_stack(tmp_path)


def _seed(stack: Stack) -> dict[str, bytes]:
    feeds = {
        "wire": rss([("wire-1", "Western officials fear regional spillover as US bases in "
                      "Iraq come under drone attack", FOUNDING), SPORT]),
        "daily": rss([STORY_EN_2]),
        "arabic": rss([STORY_AR, ECONOMY_AR], encoding="cp1256", declare=False),
        "broken": b"<html><body>Checking your browser...</body></html>",
    }
    stack.set_feeds(feeds)
    return feeds


def _story_mails(stack: Stack) -> list[tuple[str, str]]:
    """(X-Spillover-Alert, text body) of each email about the Ain al-Asad story."""
    out = []
    for msg in stack.emails():
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body else ""
        if "Ain al-Asad" in text or "عين الأسد" in text:
            out.append((str(msg["X-Spillover-Alert"]), text))
    return out


def test_once_groups_one_story_across_outlets_and_languages(stack: Stack) -> None:
    """Three outlets (two English, one windows-1256 Arabic) give one alert listing three
    sources by email and Slack; a malformed feed is reported while the others go on; a
    fourth outlet later gives exactly one update; nothing else is sent again."""
    feeds = _seed(stack)
    first = stack.run("run", "--once", "--config", "config")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "broken" in first.stderr and "HTML" in first.stderr
    mails = _story_mails(stack)
    assert len(mails) == 1, [m[0] for m in mails]
    assert "Sources (3)" in mails[0][1]
    assert not any("Liverpool" in str(m["Subject"]) for m in stack.emails())
    posts = [json.loads(p) for p in stack.slack_posts()]
    assert len(posts) == len(stack.emails())
    assert "secret-token" not in first.stderr

    sent_before = len(stack.emails())
    stack.set_feeds({**feeds, "late": rss([STORY_LATE])})
    second = stack.run("run", "--once", "--config", "config")
    assert second.returncode == 0, second.stderr[-3000:]
    mails = _story_mails(stack)
    assert len(mails) == 2, [m[0] for m in mails]
    assert mails[1][0].split()[0] == mails[0][0].split()[0]  # same alert id: an update
    assert "Sources (4)" in mails[1][1]
    assert len(stack.emails()) == sent_before + 1


def test_arabic_alert_email_reads_right(stack: Stack) -> None:
    """An Arabic-led alert arrives with its subject and body intact and an RTL HTML part."""
    stack.set_feeds({"arabic": rss([STORY_AR], encoding="cp1256", declare=False)})
    done = stack.run("run", "--once", "--config", "config")
    assert done.returncode == 0, done.stderr[-3000:]
    (msg,) = stack.emails()
    assert "عين الأسد" in str(msg["Subject"])
    raw = stack.smtp.messages[0].content
    subject_line = next(ln for ln in raw.split(b"\r\n") if ln.startswith(b"Subject:"))
    assert subject_line.isascii() and b"=?utf-8?" in subject_line.lower()
    html_part = msg.get_body(preferencelist=("html",))
    assert html_part is not None and 'dir="rtl"' in html_part.get_content()


@pytest.mark.parametrize("point", ["after_classify", "before_ack"])
def test_crash_between_classification_and_delivery_loses_nothing(stack: Stack, point: str) -> None:
    """A process that dies (os._exit) after classifying, or before acknowledging, delivers
    every alert exactly once after a restart on the same state."""
    _seed(stack)
    crashed = stack.run("run", "--once", "--config", "config", SPILLOVER_CRASH_AT=point)
    assert crashed.returncode == 75, crashed.stderr[-2000:]
    assert point == "before_ack" or stack.emails() == []
    again = stack.run("run", "--once", "--config", "config")
    assert again.returncode == 0, again.stderr[-3000:]
    ids = [str(m["Message-ID"]) for m in stack.emails()]
    assert len(_story_mails(stack)) == 1
    assert len(ids) == len(set(ids)) >= 1


def test_crash_after_send_is_at_least_once(stack: Stack) -> None:
    """Dying after the server accepted a message but before recording it may repeat that
    message once after a restart, and never loses it (the documented promise)."""
    stack.set_feeds({"daily": rss([STORY_EN_2])})
    crashed = stack.run("run", "--once", "--config", "config", SPILLOVER_CRASH_AT="after_send")
    assert crashed.returncode == 75
    again = stack.run("run", "--once", "--config", "config")
    assert again.returncode == 0, again.stderr[-3000:]
    assert 1 <= len(_story_mails(stack)) <= 2


def test_daemon_drains_on_sigterm_and_logs_one_summary(stack: Stack) -> None:
    """The daemon alerts while running, and on SIGTERM stops, drains and logs a summary."""
    stack.set_feeds({"daily": rss([STORY_EN_2])})
    proc = stack.start("run", "--config", "config")
    assert wait_for(lambda: len(stack.emails()) >= 1, 180), stack.log_of(0)[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    log = stack.log_of(0)
    assert log.count("shutdown_complete") == 1


def test_demo_prints_ingested_articles_and_the_founding_alert(tmp_path: Path) -> None:
    """`spillover demo` lists every seed article with its language and prints the founding
    article's alert with its explanation."""
    import subprocess

    from tests.stack import MODEL_CACHE

    env = {"PATH": "/usr/bin:/bin", "SPILLOVER_MODEL_CACHE": MODEL_CACHE,
           "SPILLOVER_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "monitor", "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "West fears regional" in out
    assert "why:" in out
    assert "ALERT en    demo-english" in out
    assert "ar    demo-arabic" in out and "other demo-international" in out
    assert "Liverpool" in out and "ALERT en    demo-english         0.0" not in out
