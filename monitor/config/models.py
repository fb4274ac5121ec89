"""The shapes of feeds.yaml, signals.yaml, regions.yaml and watch-list files (pydantic)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from monitor.analysis.normalize import fold_arabic, tokens
from monitor.yamldoc import KEBAB, fail

_DURATION = re.compile(
    r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s?)?\s*$"
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def parse_duration(value: object) -> object:
    """Seconds from an int or a string such as "90", "5m", "1h", "1h30m", "2d"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail('expected a duration such as 300, "5m" or "1h"')
    if isinstance(value, int):
        return value
    found = _DURATION.match(value)
    if not value.strip() or found is None:
        raise fail(f"not a duration: {value!r}", 'use seconds (300) or "30s", "5m", "1h", "1d"')
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?(\d+s?)?$"},
            ],
            "description": 'seconds, or a string such as "30s", "5m", "1h", "1d"',
        }
    ),
]


class ConfigModel(BaseModel):
    """Base of every config shape: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(ConfigModel):
    """A short text in both languages."""

    en: str = Field(min_length=1, description="English text")
    ar: str = Field(min_length=1, description="Arabic text")


def check_feed_url(url: str) -> str:
    """Accept only absolute http(s) URLs without credentials; never echo the URL back."""
    if "\\" in url:
        raise fail(
            "backslashes are not allowed in a feed URL", "use forward slashes: https://host/path"
        )
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise fail(
            "a feed URL cannot contain spaces or control characters", "percent-encode spaces as %20"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise fail(f"not a valid URL ({exc})", "write it as https://host/path") from exc
    if parts.scheme not in ("http", "https"):
        what = f"the scheme {parts.scheme!r} is" if parts.scheme else "a bare path is"
        raise fail(
            f"{what} not supported: only http and https feeds",
            "give the full address, e.g. https://www.aljazeera.com/xml/rss/all.xml",
        )
    if "@" in parts.netloc:
        raise fail(
            "user name or password in a feed URL is not allowed (it would be logged)",
            "use a public feed URL; credentials do not belong in config/feeds.yaml",
        )
    if not parts.hostname or port == 0:
        raise fail("the URL has no host", "write it as https://host/path")
    return url


class FeedConfig(ConfigModel):
    """One RSS/Atom feed to poll."""

    url: str = Field(description="absolute http:// or https:// address of the feed")
    name: str = Field(min_length=1, description="display name, unique; default: host and path")
    lang: Literal["en", "ar"] | None = Field(None, description="language hint; detected if unset")
    interval: Duration = Field(300, ge=30, description="seconds between polls (min 30)")
    tags: list[str] = Field(default_factory=list, description="free labels, e.g. arabic, wire")
    insecure_tls: bool = Field(False, description="accept self-signed certificates (opt-in)")
    enabled: bool = Field(True, description="false: keep the entry but do not poll it")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("url"), str):
            parts = urlsplit(data["url"]) if "\\" not in data["url"] else None
            if parts is not None and parts.hostname and "@" not in parts.netloc:
                return {**data, "name": (parts.netloc + parts.path).rstrip("/")}
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_feed_url(value)


class SignalExamples(ConfigModel):
    """Example sentences per language; the classifier embeds them."""

    en: list[str] = Field(min_length=1, description="English examples (at least one)")
    ar: list[str] = Field(min_length=1, description="Arabic examples (at least one)")


class SignalDef(ConfigModel):
    """One escalation or de-escalation signal the classifier scores."""

    name: str = Field(pattern=KEBAB, description="kebab-case id, e.g. drone-strike")
    direction: Literal["escalation", "de-escalation"] = Field(description="which way it points")
    weight: float = Field(1.0, ge=0, le=3, description="contribution to the escalation score")
    description: Text = Field(description="what the signal means, in both languages")
    examples: SignalExamples = Field(description="example sentences in both languages")


class RegionNames(ConfigModel):
    """Every way a region is written: countries, demonyms, cities, bases, waterways, groups."""

    en: list[str] = Field(default_factory=list, description="English names and variants")
    ar: list[str] = Field(default_factory=list, description="Arabic names and variants")


class RegionDef(ConfigModel):
    """A place the gazetteer recognises in articles."""

    name: str = Field(pattern=KEBAB, description="kebab-case id, e.g. red-sea, west-bank")
    label: Text = Field(description="display name in both languages")
    names: RegionNames = Field(description="names that place an article in this region")


def _check_phrase(value: str) -> str:
    if not tokens(value):
        raise fail(
            f"{value!r} has no letters or digits, so it can never match",
            'write a word or phrase, e.g. - "ground offensive"',
        )
    return value


def _check_pattern(source: str) -> str:
    try:
        compiled = compile_pattern(source)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise fail(
            f"invalid pattern {source!r}: {reason}",
            "RE2 syntax: no backreferences or lookaround; escape literal ( ) [ ] . with \\",
        ) from exc
    if compiled.search("") is not None:
        raise fail(
            f"pattern {source!r} matches empty text, so it would fire on every article",
            "use + instead of * so at least one character must match",
        )
    return source


# Checked item by item so a problem names its index: keywords[2], patterns[0].
Phrase = Annotated[str, Field(min_length=1), AfterValidator(_check_phrase)]
Pattern = Annotated[str, Field(min_length=1), AfterValidator(_check_pattern)]


def compile_pattern(source: str) -> Any:
    """Compile a watch-list pattern with RE2 (linear time) for normalised, case-folded text."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    return re2.compile(fold_arabic(source), options)


class QuietHours(ConfigModel):
    """A daily window in which only critical alerts are sent."""

    start: str = Field(description='"HH:MM", quoted', json_schema_extra={"pattern": r"^\d\d:\d\d$"})
    end: str = Field(description='"HH:MM", quoted', json_schema_extra={"pattern": r"^\d\d:\d\d$"})
    tz: str = Field("UTC", description="IANA time zone, e.g. Asia/Baghdad")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise fail(
                "a time must be quoted text",
                'quote it: start: "22:00" (YAML reads 22:00 as a number)',
            )
        if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise fail('expected a time as "HH:MM" (00:00 to 23:59)', 'e.g. start: "22:00"')
        return value

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise fail(
                f"unknown time zone {value!r}", "use an IANA name such as Asia/Baghdad or UTC"
            ) from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The time zone object."""
        return ZoneInfo(self.tz)


class Watchlist(ConfigModel):
    """What to alert on: regions, signals, keywords and patterns, and where to send it."""

    name: str = Field("", description="unique id; default: the file name without .yaml")
    description: str = Field("", description="what this watch-list is for")
    regions: list[str] = Field(default_factory=list, description="region names; empty: any region")
    signals: list[str] = Field(
        default_factory=list, description="signal names; empty: any escalation signal"
    )
    keywords: list[Phrase] = Field(
        default_factory=list, description="words or phrases that count as a hit"
    )
    patterns: list[Pattern] = Field(
        default_factory=list, description="RE2 regular expressions on normalised text"
    )
    exclude_keywords: list[Phrase] = Field(
        default_factory=list, description="any of these: never fire"
    )
    min_score: float = Field(0.5, ge=0, le=1, description="model escalation score needed to fire")
    require_region: bool = Field(True, description="fire only when a listed region is mentioned")
    channels: list[str] = Field(
        default_factory=lambda: ["all"], description='channel names; "all": every enabled channel'
    )
    cooldown: Duration = Field(
        3600, ge=0, description="no repeat alert for the same story within this time"
    )
    corroboration: int = Field(1, ge=1, description="distinct outlets needed before alerting")
    quiet_hours: QuietHours | None = Field(None, description="only critical alerts in this window")
    digest: Literal["none", "hourly", "daily"] = Field("none", description="batch info alerts")
    enabled: bool = Field(True, description="false: keep the file but do not evaluate it")




class FeedsFile(ConfigModel):
    """config/feeds.yaml."""

    feeds: list[FeedConfig] = Field(description="the feeds to poll")


class SignalsFile(ConfigModel):
    """config/signals.yaml."""

    signals: list[SignalDef] = Field(description="signals the classifier scores")


class RegionsFile(ConfigModel):
    """config/regions.yaml."""

    regions: list[RegionDef] = Field(description="the bilingual gazetteer")
