"""Templates in alerts/: start-up validation, escaping, direction, and the console block."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitor.channels.console import ConsoleChannel
from monitor.errors import ConfigError
from monitor.models import Source
from monitor.render import (
    EMAIL_HTML,
    SLACK_TEXT,
    TEMPLATES,
    Renderer,
    founding_article,
    is_rtl,
    one_line,
    sample_alert,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def alerts_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped templates."""
    target = tmp_path / "alerts"
    shutil.copytree(ROOT / "alerts", target)
    return target


def test_shipped_templates_validate_and_render() -> None:
    """Every shipped template compiles and renders the English and Arabic sample alerts."""
    renderer = Renderer(ROOT / "alerts")
    for alert in (sample_alert(), sample_alert(lang="ar")):
        subject, text, html = renderer.render_email(alert)
        assert alert.title in subject and alert.title in text and alert.title in html
        assert renderer.render_slack(alert)["blocks"]
        assert alert.reason in renderer.render_console(alert)


def test_syntax_error_names_file_and_line(alerts_copy: Path) -> None:
    """A broken tag fails start-up with the file, the line and a hint."""
    path = alerts_copy / "email.txt.j2"
    path.write_text("line one\n{{ alert.title }\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Renderer(alerts_copy)
    [problem] = info.value.problems
    assert problem.file == str(path) and problem.location == "line 2" and problem.hint


def test_misspelt_variable_is_caught_at_start_up(alerts_copy: Path) -> None:
    """{{ alert.titel }} is reported at start-up (StrictUndefined on a sample), with the line."""
    path = alerts_copy / EMAIL_HTML
    path.write_text("<p>\n{{ alert.titel }}</p>\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Renderer(alerts_copy)
    problem = info.value.problems[0]
    assert problem.file == str(path) and "titel" in problem.message
    assert problem.location == "line 2" and "alert.title" in problem.hint


def test_missing_template_and_slack_block_are_reported(alerts_copy: Path) -> None:
    """A deleted template is named; a Slack template without a required block is named too."""
    (alerts_copy / "console.txt.j2").unlink()
    with pytest.raises(ConfigError, match=r"console\.txt\.j2: template is missing"):
        Renderer(alerts_copy)
    shutil.copy(ROOT / "alerts" / "console.txt.j2", alerts_copy / "console.txt.j2")
    (alerts_copy / SLACK_TEXT).write_text("{% block header %}x{% endblock %}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"missing \{% block summary %\}"):
        Renderer(alerts_copy)


def test_every_template_is_checked(alerts_copy: Path) -> None:
    """A problem in any one of the templates fails validation."""
    for name in TEMPLATES:
        (alerts_copy / name).write_text("{{ alert.nope }}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Renderer(alerts_copy)
    assert {Path(p.file).name for p in info.value.problems} == set(TEMPLATES)


def test_html_escapes_feed_text_and_unsafe_links() -> None:
    """Markup in titles is escaped; javascript: links never become an href."""
    renderer = Renderer(ROOT / "alerts")
    source = Source(article_id="x", feed="f", title="<script>alert(1)</script>",
                    link="javascript:alert(1)")
    alert = sample_alert().model_copy(update={"title": "<b>x</b>", "sources": (source,)})
    _, _, html = renderer.render_email(alert)
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>x</b>" not in html
    assert "javascript:" not in html


def test_html_direction_follows_content() -> None:
    """Arabic alerts get dir=rtl and lang=ar; English ones ltr; every source has dir=auto."""
    renderer = Renderer(ROOT / "alerts")
    _, _, arabic = renderer.render_email(sample_alert(lang="ar"))
    _, _, english = renderer.render_email(sample_alert())
    assert '<html lang="ar" dir="rtl">' in arabic and '<html lang="en" dir="ltr">' in english
    assert arabic.count('<li dir="auto"') == len(sample_alert().sources)


@pytest.mark.parametrize(("text", "rtl"), [
    ("هجوم بطائرات مسيرة على قاعدة عين الأسد", True),
    ("Drone attack on Ain al-Asad airbase", False),
    ("حزب الله يعلن مسؤوليته Hezbollah", True),
    ("حزب الله Hezbollah", False),
    ("Hezbollah (حزب الله) fires guided missiles at Israeli positions", False),
    ("12345 — !!", False),
    ("", False),
])
def test_is_rtl(text: str, rtl: bool) -> None:
    """is_rtl is true when at least half the letters are Arabic-script."""
    assert is_rtl(text) is rtl


def test_one_line_removes_every_line_break() -> None:
    """CR, LF, U+2028/2029 and controls become single spaces; long subjects are cut with …."""
    assert one_line("a\r\nb\u2028c\u2029d\x00e\tf") == "a b c d e f"
    cut = one_line("x" * 500)
    assert len(cut) == 200 and cut.endswith("…")


def test_sample_alert_comes_from_the_founding_article() -> None:
    """The sample's summary opens the founding article; it has an English and an Arabic source."""
    text = founding_article(ROOT)
    alert = sample_alert(base=ROOT)
    assert text.startswith("Western officials") and alert.summary.startswith(text[:60])
    assert {s.lang for s in alert.sources} == {"en", "ar"}
    assert is_rtl(sample_alert(lang="ar").title)


async def test_console_prints_the_alert_block() -> None:
    """The console block shows severity, title, score, signals, regions, keywords, sources, why."""
    stream = io.StringIO()
    channel = ConsoleChannel(SimpleNamespace(name="console", type="console"),
                             Renderer(ROOT / "alerts"), stream=stream)
    alert = sample_alert()
    assert channel.recipients() == [""]
    await channel.send(alert, "", idempotency_key="k")
    out = stream.getvalue()
    for needle in ("CRITICAL", alert.title, "0.91", "military_action 0.93", "Lebanon",
                   "ground offensive", "[ar]", alert.sources[0].link, alert.reason):
        assert needle in out


async def test_console_strips_terminal_escapes() -> None:
    """ANSI escape sequences in feed text never reach the terminal."""
    stream = io.StringIO()
    channel = ConsoleChannel(SimpleNamespace(name="console", type="console"),
                             Renderer(ROOT / "alerts"), stream=stream)
    alert = sample_alert().model_copy(update={"title": "\x1b[2J\x1b]0;pwned\x07Title"})
    await channel.send(alert, "", idempotency_key="k")
    assert "\x1b" not in stream.getvalue() and "\x07" not in stream.getvalue()
