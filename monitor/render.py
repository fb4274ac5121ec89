"""Fills the user-editable alerts/ templates: email, Slack wording and the console block."""

from __future__ import annotations

import re
import traceback
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import structlog

from monitor.errors import ConfigError, Problem
from monitor.models import Alert, Severity, SignalScore, Source

log = structlog.get_logger(__name__)

EMAIL_SUBJECT = "email_subject.txt.j2"
EMAIL_TEXT = "email.txt.j2"
EMAIL_HTML = "email.html.j2"
SLACK_TEXT = "slack_text.txt.j2"
CONSOLE = "console.txt.j2"
TEMPLATES = (EMAIL_SUBJECT, EMAIL_TEXT, EMAIL_HTML, SLACK_TEXT, CONSOLE)
# The pieces of Slack wording; the Block Kit layout around them is built in channels/slack.py.
SLACK_BLOCKS = ("header", "summary", "why", "fallback")
SUBJECT_MAX = 200

_RTL_RANGES = (
    (0x0590, 0x08FF),  # Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Arabic Supplement/Extended
    (0xFB1D, 0xFDFF),  # Hebrew and Arabic presentation forms A
    (0xFE70, 0xFEFF),  # Arabic presentation forms B
)
_LANG_NAMES = {"en": "English", "ar": "العربية", "other": "other"}
# C0/C1 controls (ANSI escapes, bells) from feeds must not reach a terminal; keep \t and \n.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def is_rtl(text: str, threshold: float = 0.5) -> bool:
    """Whether at least ``threshold`` of the letters in ``text`` are Arabic-script (or Hebrew)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    rtl = sum(1 for c in letters if any(lo <= ord(c) <= hi for lo, hi in _RTL_RANGES))
    return rtl / len(letters) >= threshold


def one_line(text: str, limit: int = SUBJECT_MAX) -> str:
    """Collapse line breaks and control characters to single spaces: no header injection."""
    flat = "".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c for c in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def http_url(url: str) -> str:
    """The URL if it is http(s), else "": feed links may be javascript: or data: URLs."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ""
    return url.strip() if parts.scheme in {"http", "https"} and parts.netloc else ""


def slack_escape(value: object) -> str:
    """Escape Slack's three control characters so feed text cannot form links or mentions."""
    text = str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _strip_controls(value: object) -> object:
    return _CONTROL.sub("", value) if isinstance(value, str) else value


def _pct(value: float) -> str:
    return f"{round(value * 100)}%"


def _score(value: float) -> str:
    return f"{value:.2f}"


def _lang_name(code: str) -> str:
    return _LANG_NAMES.get(code, code)


def _context(alert: Alert) -> dict[str, Any]:
    rtl = is_rtl(alert.title)
    return {
        "alert": alert,
        "severity": alert.severity.value,
        "rtl": rtl,
        "dir": "rtl" if rtl else "ltr",
        "lang": "ar" if rtl else (alert.lang or "en"),
        "signals": sorted(alert.signals, key=lambda s: s.score, reverse=True),
        "sources": alert.sources,
    }


class Renderer:
    """Loads and checks alerts/ templates once; renders alerts for every channel."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir)
        loader = jinja2.FileSystemLoader(str(self.templates_dir))
        self._text = self._env(loader, autoescape=False, finalize=_strip_controls)
        self._html = self._env(loader, autoescape=True)
        self._slack = self._env(loader, autoescape=False, finalize=slack_escape)
        self._slack.filters["isolate"] = slack_isolate
        self.validate()

    @staticmethod
    def _env(
        loader: jinja2.BaseLoader, *, autoescape: bool, finalize: Callable[[Any], Any] | None = None
    ) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=loader,
            # on for HTML; plain text needs none, Slack text escapes through finalize
            autoescape=autoescape,  # noqa: S701
            undefined=jinja2.StrictUndefined,
            finalize=finalize,
            keep_trailing_newline=False,
            # Templates change only through a validated reload (Runtime.reload), never by
            # jinja noticing a half-edited file on disk.
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(pct=_pct, score=_score, lang_name=_lang_name, http_url=http_url)
        env.tests["rtl"] = is_rtl
        env.globals["is_rtl"] = is_rtl
        return env

    # validation

    def validate(self) -> None:
        """Compile every template and render two samples; raise ConfigError listing all problems."""
        problems: list[Problem] = []
        for name in TEMPLATES:
            problems.extend(self._compile_problems(name))
        if not problems:
            for alert in (sample_alert(), sample_alert(lang="ar")):
                problems.extend(self._render_problems(alert))
        if problems:
            raise ConfigError(problems)

    def _compile_problems(self, name: str) -> list[Problem]:
        file = str(self.templates_dir / name)
        try:
            self._env_for(name).get_template(name)
        except jinja2.TemplateNotFound:
            return [Problem(file, "", "template is missing",
                            "copy the shipped file from the project's alerts/ directory")]
        except jinja2.TemplateSyntaxError as exc:
            return [Problem(file, f"line {exc.lineno}", exc.message or "syntax error",
                            "check the {{ }} and {% %} pairs on that line (Jinja2 syntax)")]
        return []

    def _render_problems(self, alert: Alert) -> list[Problem]:
        checks: list[tuple[str, Callable[[], object]]] = [
            (EMAIL_SUBJECT, lambda: self._render(EMAIL_SUBJECT, alert)),
            (EMAIL_TEXT, lambda: self._render(EMAIL_TEXT, alert)),
            (EMAIL_HTML, lambda: self._render(EMAIL_HTML, alert)),
            (SLACK_TEXT, lambda: self.slack_wording(alert)),
            (CONSOLE, lambda: self._render(CONSOLE, alert)),
        ]
        problems = []
        for name, check in checks:
            try:
                check()
            except (jinja2.TemplateError, KeyError, TypeError, ValueError, AttributeError) as exc:
                problems.append(self._render_problem(name, exc))
        return problems

    def _render_problem(self, name: str, exc: Exception) -> Problem:
        file = str(self.templates_dir / name)
        line = _template_line(exc, file)
        where = f"line {line}" if line else ""
        if isinstance(exc, KeyError):
            blocks = ", ".join(SLACK_BLOCKS)
            return Problem(file, where, f"missing {{% block {exc.args[0]} %}}",
                           f"the Slack wording template defines the blocks {blocks}")
        hint = ("available: alert.title, alert.summary, alert.severity, alert.score, "
                "alert.signals, alert.regions, alert.keywords, alert.sources, alert.reason, "
                "alert.watchlist; check the spelling")
        return Problem(file, where, f"cannot render a sample alert: {exc}", hint)

    def _env_for(self, name: str) -> jinja2.Environment:
        if name == EMAIL_HTML:
            return self._html
        return self._slack if name == SLACK_TEXT else self._text

    def _render(self, name: str, alert: Alert) -> str:
        return self._env_for(name).get_template(name).render(_context(alert))

    # rendering

    def render_email(self, alert: Alert) -> tuple[str, str, str]:
        """(subject on one line, plain text, HTML) for one alert."""
        subject = one_line(self._render(EMAIL_SUBJECT, alert))
        return subject, self._render(EMAIL_TEXT, alert), self._render(EMAIL_HTML, alert)

    def slack_wording(self, alert: Alert) -> dict[str, str]:
        """The template's Slack pieces (header, summary, why, fallback), mrkdwn-escaped."""
        template = self._slack.get_template(SLACK_TEXT)
        out = {}
        for block in SLACK_BLOCKS:
            context = template.new_context(_context(alert))
            out[block] = "".join(template.blocks[block](context)).strip()
        return out

    def render_slack(self, alert: Alert) -> dict[str, Any]:
        """The Block Kit payload for one alert: template wording in a layout built here."""
        return slack_payload(alert, self.slack_wording(alert))

    def render_console(self, alert: Alert) -> str:
        """The readable block printed to stdout."""
        return self._render(CONSOLE, alert)


# Slack Block Kit layout. Built in Python, not a JSON template: Slack's limits (150-character
# header, 3000-character sections) and link syntax need code, and a JSON template breaks on
# the first unescaped quote a user types. The wording comes from alerts/slack_text.txt.j2.

_SLACK_SECTION_MAX = 3000
_SLACK_HEADER_MAX = 150
_SLACK_SOURCES_MAX = 10
# Right-to-left isolate: an Arabic title keeps its own direction inside an LTR Slack line, and
# neighbouring punctuation or numbers ("— demo-arabic · 2") cannot be pulled into its run.
_RLI, _PDI = "\u2067", "\u2069"


def _slack_cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = re.sub(r"&[a-z]*$", "", text[: limit - 1])  # never leave half an &amp; entity
    return cut + "…"


def slack_isolate(text: str) -> str:
    """Wrap predominantly Arabic text in RLI…PDI so it renders right-to-left inside LTR lines."""
    return f"{_RLI}{text}{_PDI}" if is_rtl(text) else text


def _slack_link(url: str) -> str:
    safe = http_url(url)
    # | < > end a Slack link; percent-encoding keeps the URL working and the markup intact.
    for char, code in (("|", "%7C"), ("<", "%3C"), (">", "%3E"), (" ", "%20")):
        safe = safe.replace(char, code)
    return safe


def slack_sources(sources: tuple[Source, ...]) -> str:
    """A mrkdwn bullet list of sources with links and languages, escaped."""
    lines = []
    for source in sources[:_SLACK_SOURCES_MAX]:
        label = slack_isolate(slack_escape(one_line(source.title, 300)))
        link = _slack_link(source.link)
        text = f"<{link}|{label}>" if link else label
        lines.append(f"• {text} — {slack_escape(source.feed)} · {_lang_name(source.lang)}")
    if len(sources) > _SLACK_SOURCES_MAX:
        lines.append(f"… and {len(sources) - _SLACK_SOURCES_MAX} more")
    return "*Sources*\n" + "\n".join(lines) if lines else ""


def slack_payload(alert: Alert, wording: Mapping[str, str]) -> dict[str, Any]:
    """Header, summary, sources and why-it-fired blocks plus the notification text fallback."""
    header = _slack_cut(one_line(wording["header"], 1000), _SLACK_HEADER_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
    ]
    for text in (wording["summary"], slack_sources(alert.sources)):
        if text:
            cut = _slack_cut(text, _SLACK_SECTION_MAX)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": cut}})
    if wording["why"]:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": _slack_cut(wording["why"], _SLACK_SECTION_MAX)}]})
    return {"text": _slack_cut(wording["fallback"], _SLACK_SECTION_MAX), "blocks": blocks}


def _template_line(exc: BaseException, file: str) -> int | None:
    """The template line an error came from: Jinja rewrites frames to point into templates."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == Path(file):
            line = frame.lineno
    return line


# the sample alert (`spillover test-alert` and template validation)

_SAMPLE_TITLE = "Western officials fear regional spillover as US forces face drone attacks in Iraq"
_SAMPLE_TITLE_AR = (
    "مخاوف غربية من امتداد الصراع إقليمياً مع تعرض القوات الأمريكية لهجمات بطائرات مسيرة في العراق"
)


def founding_article(base: Path | None = None) -> str:
    """The founding article: seeds/founding-article.txt, else ../shared/seeds/ (same name).

    Looked up from the working directory, then from the project holding this package.
    """
    roots = [base] if base else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in roots:
        for path in (root / "seeds" / "founding-article.txt",
                     root.parent / "shared" / "seeds" / "founding-article.txt"):
            if path.is_file():
                return path.read_text(encoding="utf-8").strip()
    return _SAMPLE_TITLE + "."


def _first_sentences(text: str, count: int) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(sentences[:count])


def sample_alert(lang: str = "en", base: Path | None = None) -> Alert:
    """An alert built from the founding article, with an English and an Arabic source."""
    text = founding_article(base)
    published = datetime(2023, 10, 20, 9, 30, tzinfo=UTC)
    sources = (
        Source(article_id="sample-en", feed="demo-english", title=_SAMPLE_TITLE,
               link="https://example.com/world/spillover-drone-attacks-iraq", lang="en",
               published=published),
        Source(article_id="sample-ar", feed="demo-arabic", title=_SAMPLE_TITLE_AR,
               link="https://example.com/ar/spillover-iraq", lang="ar", published=published),
    )
    arabic = lang == "ar"
    return Alert(
        id="sample-founding-article",
        watchlist="levant",
        severity=Severity.CRITICAL,
        title=_SAMPLE_TITLE_AR if arabic else _SAMPLE_TITLE,
        summary=_SAMPLE_TITLE_AR if arabic else _first_sentences(text, 2),
        lang="ar" if arabic else "en",
        score=0.91,
        signals=(SignalScore(name="military_action", score=0.93),
                 SignalScore(name="cross_border_spillover", score=0.88),
                 SignalScore(name="proxy_attack", score=0.81)),
        regions=("Iraq", "Lebanon", "Syria", "Yemen", "Gaza"),
        keywords=("drone attack", "ground offensive", "Hezbollah", "spillover"),
        sources=sources if not arabic else tuple(reversed(sources)),
        reason="military_action 0.93 ≥ 0.80 and 2 sources in 2 languages within 6 h",
        created=published,
    )


def template_context(alert: Alert) -> Mapping[str, Any]:
    """The variables every template sees (documented for template authors)."""
    return _context(alert)
