"""Logging set-up and secret masking: no password, token or webhook secret reaches stderr."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from monitor.errors import SettingsError
from monitor.logs import configure_logging, mask_text, mask_url

SLACK = "https://hooks.slack.com/services/T0ABCDEF1/B0GHIJKL2/s3cr3tWebhookPart"
SECRETS = ("s3cr3tWebhookPart", "hunter2", "Pa55word", "tok-9f8e7d", "sig-abc123", "eyJhbGciOi")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the root logger and structlog as they were for the next test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _emit_secrets() -> None:
    log = structlog.get_logger("tests.logs")
    log.info("alert_sent", channel="slack", url=SLACK, lang="ar", title="قصف على الحدود")
    log.info("store_connected", state_url="redis://:hunter2@redis:6379/0",
             smtp_password="Pa55word", headers={"Authorization": "Bearer eyJhbGciOi.x.y"})
    log.warning("fetch_failed", feed="wire", url="https://api.example/rss?lang=ar&token=tok-9f8e7d")
    log.info("channel_ready", webhook_url=SLACK, slack_token="tok-9f8e7d")
    logging.getLogger("third.party").warning("POST %s failed", SLACK)
    logging.getLogger("third.party").error("smtp://desk:Pa55word@mail.example.org:587 refused")
    try:
        raise ConnectionError("cannot reach https://cdn.example/x.xml?X-Amz-Signature=sig-abc123")
    except ConnectionError:
        log.exception("poll_crashed", feed="wire")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_no_secret_reaches_stderr(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every kind of secret is masked in both formats, for structlog and stdlib loggers alike."""
    configure_logging(fmt, "INFO")
    _emit_secrets()
    err = capsys.readouterr().err
    assert err.count("\n") >= 7, err
    for secret in SECRETS:
        assert secret not in err, f"{secret} leaked in {fmt} output:\n{err}"
    assert "https://hooks.slack.com/services/T…/B…/…" in err
    assert "redis://:****@redis:6379/0" in err
    assert "smtp://desk:****@mail.example.org:587" in err
    assert "قصف على الحدود" in err


def test_json_lines_parse_with_utc_timestamps(capsys: pytest.CaptureFixture[str]) -> None:
    """In json format every line is one JSON object with an ISO UTC timestamp, level and event."""
    configure_logging("json", "INFO")
    _emit_secrets()
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 7
    for record in records:
        assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]
        assert {"event", "level", "logger"} <= record.keys()
    first = records[0]
    assert first["title"] == "قصف على الحدود"  # Arabic stays readable, not \\u escapes
    assert "قصف" in lines[0]
    crashed = next(r for r in records if r["event"] == "poll_crashed")
    assert "ConnectionError" in crashed["exception"]
    assert "X-Amz-Signature=****" in crashed["exception"]


def test_level_filters_structlog_and_stdlib(capsys: pytest.CaptureFixture[str]) -> None:
    """Below the configured level nothing is written, from structlog or from stdlib loggers."""
    configure_logging("json", "warning")
    structlog.get_logger("a").info("quiet")
    logging.getLogger("b").info("quiet too")
    structlog.get_logger("a").warning("loud")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["loud"]


def test_reconfigure_replaces_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """Configuring twice leaves one handler, so lines are not written twice."""
    configure_logging("console", "INFO")
    configure_logging("json", "INFO")
    structlog.get_logger("a").info("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "once"


def test_bad_level_and_format_are_settings_errors() -> None:
    """An unknown level or format names the variable to fix."""
    with pytest.raises(SettingsError, match="SPILLOVER_LOG_LEVEL"):
        configure_logging("json", "LOUD")
    with pytest.raises(SettingsError, match="SPILLOVER_LOG_FORMAT"):
        configure_logging("xml", "INFO")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (SLACK, "https://hooks.slack.com/services/T…/B…/…"),
        ("redis://:hunter2@redis:6379/0", "redis://:****@redis:6379/0"),
        ("rediss://default:hunter2@r.example:6380", "rediss://default:****@r.example:6380"),
        ("smtp://desk:Pa55word@mail.example.org", "smtp://desk:****@mail.example.org"),
        ("https://ghp_tok9f8e7d@git.example/x", "https://****@git.example/x"),
        ("https://discord.com/api/webhooks/1234/tok-9f8e7d", "https://discord.com/api/webhooks/…/…"),
        ("https://a.example/rss?lang=ar&token=x1&q=a%20b", "https://a.example/rss?lang=ar&token=****&q=a%20b"),
        ("https://a.example/f?api_key=1&apiKey=2&secret=3&password=4&sig=5&signal=6",
         "https://a.example/f?api_key=****&apiKey=****&secret=****&password=****&sig=****&signal=6"),
        ("https://www.aljazeera.net/rss/services/feed.xml?lang=ar",
         "https://www.aljazeera.net/rss/services/feed.xml?lang=ar"),
        ("https://ar.example/أخبار/عاجل", "https://ar.example/أخبار/عاجل"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    """Passwords, webhook paths and credential parameters are masked; other URLs are untouched."""
    assert mask_url(url) == expected


def test_mask_text_finds_secrets_in_prose() -> None:
    """Error messages keep their meaning but lose every credential they quote."""
    text = (
        f"POST {SLACK} failed; retry with Authorization: Bearer eyJhbGciOi.x.y "
        'or password=hunter2, {"token": "tok-9f8e7d"}, slack xoxb-1111-2222-abcd, '
        "redis redis://:hunter2@r:6379/0."
    )
    masked = mask_text(text)
    for secret in (*SECRETS, "xoxb-1111-2222-abcd"):
        assert secret not in masked
    assert masked.startswith("POST https://hooks.slack.com/services/T…/B…/… failed; retry with")
    assert "redis://:****@r:6379/0." in masked
    assert mask_text("feed wire: HTTP 503, retry after 30.0s") == (
        "feed wire: HTTP 503, retry after 30.0s"
    )


def test_unparseable_url_is_masked_whole() -> None:
    """A URL too broken to parse (bad port) still does not show its password."""
    assert "hunter2" not in mask_url("redis://:hunter2@host:notaport/0")
