"""Live reload under a running daemon: valid edits apply, broken or unsafe ones leave it running."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import app
from monitor.channels import build_channel
from monitor.config import Config, load_config
from monitor.settings import load_settings
from tests.servers import Reply
from tests.stack import STRIKE, TANKER, Stack, make_stack, rss, wait_for

pytestmark = pytest.mark.timeout(180)

BASE_ATTACK = ("asad-1", "Drones attack US forces at Ain al-Asad air base in western Iraq",
               "Several attack drones targeted the base housing US troops in Anbar province; "
               "two were shot down, officials said.")
QUIET = [(f"q-{i}", f"Trade fair opens in city number {i}",
          "Exhibitors showed farm machinery and textiles to visitors.") for i in range(4)]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A loopback deployment (feeds, SMTP, Slack stand-in) in a temporary directory."""
    yield from make_stack(tmp_path)


def _events(stack: Stack, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log events called ``name`` (stdout alert blocks are skipped)."""
    out = []
    for line in stack.log_of(0).splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def _await_event(stack: Stack, name: str, count: int, within: float) -> dict[str, Any]:
    """Wait for the ``count``-th ``name`` event; return it."""
    assert wait_for(lambda: len(_events(stack, name)) >= count, within, 0.1), (
        name, stack.log_of(0)[-3000:])
    return _events(stack, name)[count - 1]


def _serve(stack: Stack, feed: str, items: list[tuple[str, str, str]]) -> None:
    stack.http.routes[f"/{feed}.xml"] = Reply(200, rss(items), {"Content-Type": "application/xml"})


def _subjects(stack: Stack, word: str) -> list[str]:
    return [str(m["Subject"]) for m in stack.emails() if word in str(m["Subject"])]


def test_live_reload_applies_valid_edits_and_survives_broken_ones(stack: Stack,
                                                                   redis_url: str) -> None:
    """A valid watch-list edit applies within 5 s; a truncated, an empty and a malformed
    file are each logged with file and location, told on the operator's channel, and the
    daemon keeps alerting with the last good configuration; a reload dropping most feeds
    is refused."""
    stack.set_feeds({"wire": rss([STRIKE]), **{f"quiet{i}": rss([q]) for i, q in
                                               enumerate(QUIET)}})
    watchlist = stack.config / "watchlists" / "middle-east.yaml"
    good = watchlist.read_text(encoding="utf-8")
    stack.start("run", "--config", "config", SPILLOVER_STATE_URL=redis_url,
                SPILLOVER_LOG_FORMAT="json", SPILLOVER_OPERATOR_CHANNEL="email")
    assert wait_for(lambda: _subjects(stack, "Tyre") and stack.slack_posts(), 120), (
        stack.log_of(0)[-3000:])
    slack_before = len(stack.slack_posts())

    # Valid: alerts of this watch-list now go by email only.
    email_only = good.replace("channels: [all]", "channels: [email]")
    assert email_only != good
    written = time.monotonic()
    watchlist.write_text(email_only, encoding="utf-8")
    _await_event(stack, "config_reloaded", 1, 5)
    assert time.monotonic() - written < 5

    broken = {
        "truncated": good[: good.index('"ground off') + len('"ground off')],
        "empty": "",
        "malformed": "regions: [israel, gaza\nmin_score: 0.5\n",
    }
    for n, (kind, text) in enumerate(broken.items(), start=1):
        watchlist.write_text(text, encoding="utf-8")
        event = _await_event(stack, "config_invalid", n, 5)
        assert event["file"].endswith("watchlists/middle-east.yaml"), (kind, event)
        assert kind == "empty" or event["location"].startswith("line "), (kind, event)
    assert wait_for(lambda: _subjects(stack, "configuration problem"), 10)
    assert len(_events(stack, "config_reloaded")) == 1

    # Still alerting, by the last good configuration (email only), with the bad file in place.
    _serve(stack, "quiet0", [QUIET[0], TANKER])
    assert wait_for(lambda: _subjects(stack, "Hodeidah"), 45), stack.log_of(0)[-3000:]
    time.sleep(1)  # a Slack post, if one were wrongly made, would be in flight now
    assert len(stack.slack_posts()) == slack_before

    watchlist.write_text(email_only, encoding="utf-8")
    _await_event(stack, "config_reloaded", 2, 5)
    feeds_yaml = stack.config / "feeds.yaml"
    doc = yaml.safe_load(feeds_yaml.read_text(encoding="utf-8"))
    feeds_yaml.write_text(yaml.safe_dump({"feeds": doc["feeds"][:1]}), encoding="utf-8")
    refused = _await_event(stack, "config_reload_refused", 1, 5)
    assert refused["feeds"] == [5, 1]
    assert wait_for(lambda: _subjects(stack, "configuration problem")
                    and any("refused" in _body(m) for m in stack.emails()), 10)
    assert len(_events(stack, "config_reloaded")) == 2
    assert len(_subjects(stack, "Tyre")) == len(_subjects(stack, "Hodeidah")) == 1

    # Channels reload too: a new webhook and the watch-list back on every channel.
    feeds_yaml.write_text(yaml.safe_dump(doc), encoding="utf-8")
    _await_event(stack, "config_reloaded", 3, 5)
    stack.http.routes["/hook/T000/B000/moved"] = Reply(200, b"ok")
    channels_yaml = stack.config / "channels.yaml"
    channels_yaml.write_text(channels_yaml.read_text(encoding="utf-8").replace(
        "${SPILLOVER_SLACK_WEBHOOK_URL}", stack.http.url("/hook/T000/B000/moved")),
        encoding="utf-8")
    assert _await_event(stack, "config_reloaded", 4, 5)["channels_changed"] == ["slack"]
    watchlist.write_text(good, encoding="utf-8")
    _await_event(stack, "config_reloaded", 5, 5)
    _serve(stack, "quiet1", [QUIET[1], BASE_ATTACK])
    assert wait_for(lambda: any(r.path.endswith("/moved") for r in stack.http.requests), 45), (
        stack.log_of(0)[-3000:])
    assert "moved" not in stack.log_of(0), "the new webhook URL leaked into the log"


def _body(msg: Any) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return str(part.get_content()) if part else ""


WEBHOOK = "https://hooks.slack.com/services/T0RELOAD/B0RELOAD/reload-secret-token"


def _logged_url(caplog: pytest.LogCaptureFixture) -> str:
    """What an httpx log line naming the webhook reads like after masking."""
    caplog.clear()
    logging.getLogger("httpx").warning("HTTP Request: POST %s", WEBHOOK)
    return caplog.records[-1].getMessage()


def _runtime_with_changed_slack(config: Path) -> tuple[app.Runtime, Config]:
    """A Runtime with its channels built, and the config after the Slack timeout changed."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "config", config)
    rt = app.Runtime(load_settings(), config, root / "alerts")
    rt.channels = {c.name: build_channel(c, rt.renderer) for c in rt.config.enabled_channels()}
    channels_yaml = config / "channels.yaml"
    channels_yaml.write_text(channels_yaml.read_text(encoding="utf-8").replace(
        "webhook_url: ${SPILLOVER_SLACK_WEBHOOK_URL}",
        "webhook_url: ${SPILLOVER_SLACK_WEBHOOK_URL}\n    timeout: 5"), encoding="utf-8")
    return rt, load_config(config)


async def test_a_changed_channel_is_rebuilt_and_the_old_one_retired_not_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload changing the Slack channel builds a new one; the old one stays open for a send
    in flight until RETIRE_SECONDS pass, and closing it leaves the new one's URL masked."""
    monkeypatch.setenv("SPILLOVER_SLACK_WEBHOOK_URL", WEBHOOK)
    rt, changed = _runtime_with_changed_slack(tmp_path / "config")
    old, console = rt.channels["slack"], rt.channels["console"]

    assert rt._swap_channels(changed, rt.renderer) == ["slack"]
    new = rt.channels["slack"]
    assert new is not old and rt.channels["console"] is console  # unchanged: kept
    await rt.close_retired()
    assert not old._closed  # type: ignore[attr-defined]
    monkeypatch.setattr(app, "RETIRE_SECONDS", 0.0)
    await rt.close_retired()
    assert old._closed  # type: ignore[attr-defined]
    assert WEBHOOK not in _logged_url(caplog)  # the new channel still holds the URL
    await new.close()
