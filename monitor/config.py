"""Models and loader for config/*.yaml: validate every file, report every problem at once."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from monitor.analysis.normalize import fold_arabic, tokens
from monitor.errors import ConfigError
from monitor.yamldoc import KEBAB, Doc, DocReader, Loc, describe, fail, fields_hint

_DURATION = re.compile(
    r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s?)?\s*$"
)
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(_Model):
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


class FeedConfig(_Model):
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


class SignalExamples(_Model):
    """Example sentences per language; the classifier embeds them."""

    en: list[str] = Field(min_length=1, description="English examples (at least one)")
    ar: list[str] = Field(min_length=1, description="Arabic examples (at least one)")


class SignalDef(_Model):
    """One escalation or de-escalation signal the classifier scores."""

    name: str = Field(pattern=KEBAB, description="kebab-case id, e.g. drone-strike")
    direction: Literal["escalation", "de-escalation"] = Field(description="which way it points")
    weight: float = Field(1.0, ge=0, le=3, description="contribution to the escalation score")
    description: Text = Field(description="what the signal means, in both languages")
    examples: SignalExamples = Field(description="example sentences in both languages")


class RegionNames(_Model):
    """Every way a region is written: countries, demonyms, cities, bases, waterways, groups."""

    en: list[str] = Field(default_factory=list, description="English names and variants")
    ar: list[str] = Field(default_factory=list, description="Arabic names and variants")


class RegionDef(_Model):
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


class QuietHours(_Model):
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


class Watchlist(_Model):
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


class _ChannelBase(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="unique channel name")
    when_env: str | None = Field(
        None, pattern=_ENV_NAME, description="enabled only when this env var is non-empty"
    )
    enabled: bool = Field(True, description="false: configured but switched off")


class ConsoleChannel(_ChannelBase):
    """Print alerts to standard output (always available)."""

    type: Literal["console"] = Field(description="console")


# Editors see ${VAR} text where the loader later puts numbers or lists.
_VAR_TEXT = {"type": "string", "pattern": r"\$\{"}
_OR_VAR_INT = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, _VAR_TEXT]}
_OR_VAR_LIST = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}


def _split_recipients(value: Any) -> Any:
    return (
        [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, str)
        else value
    )


class EmailChannel(_ChannelBase):
    """Send alerts by SMTP."""

    type: Literal["email"] = Field(description="email")
    host: str = Field(min_length=1, description="SMTP server host name")
    port: Annotated[int, WithJsonSchema(_OR_VAR_INT)] = Field(
        587, ge=1, le=65535, description="SMTP port"
    )
    username: str | None = Field(None, description="SMTP user; unset: no login")
    password: SecretStr | None = Field(None, description="SMTP password (use ${VAR})")
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="transport security"
    )
    sender: str = Field(pattern=r"@", description="From address")
    recipients: Annotated[
        list[Annotated[str, Field(pattern=r"^[^@\s,]+@[^@\s,]+$")]],
        BeforeValidator(_split_recipients),
        WithJsonSchema(_OR_VAR_LIST),
    ] = Field(min_length=1, description="To addresses (a list, or one comma-separated string)")
    timeout: float = Field(30.0, gt=0, le=300, description="seconds per SMTP conversation")

    @field_validator("username", "password", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # ${SPILLOVER_SMTP_USER:-} expands to "" when unset: that means "no login"
        return None if value == "" else value


class SlackChannel(_ChannelBase):
    """Post alerts to a Slack incoming webhook."""

    type: Literal["slack"] = Field(description="slack")
    webhook_url: SecretStr = Field(description="incoming-webhook URL (a secret: use ${VAR})")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per request")

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        # Plain http only to this machine (a local relay or a test stand-in): never in clear
        # over a network.
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not (parts.scheme == "https" or loopback) or not parts.hostname:
            raise fail(
                "webhook_url must be an https:// URL",
                "copy it from Slack: https://hooks.slack.com/services/…",
            )
        return value


Channel = Annotated[ConsoleChannel | EmailChannel | SlackChannel, Field(discriminator="type")]
CHANNEL_TYPES: dict[str, type[ConsoleChannel | EmailChannel | SlackChannel]] = {
    "console": ConsoleChannel,
    "email": EmailChannel,
    "slack": SlackChannel,
}


class FeedsFile(_Model):
    """config/feeds.yaml."""

    feeds: list[FeedConfig] = Field(description="the feeds to poll")


class SignalsFile(_Model):
    """config/signals.yaml."""

    signals: list[SignalDef] = Field(description="signals the classifier scores")


class RegionsFile(_Model):
    """config/regions.yaml."""

    regions: list[RegionDef] = Field(description="the bilingual gazetteer")


class ChannelsFile(_Model):
    """config/channels.yaml."""

    channels: list[Channel] = Field(description="where alerts go")


@dataclass(frozen=True)
class Config:
    """Everything in config/, validated; replaced as a whole on reload."""

    root: Path
    feeds: tuple[FeedConfig, ...]
    signals: tuple[SignalDef, ...]
    regions: tuple[RegionDef, ...]
    watchlists: tuple[Watchlist, ...]
    channels: tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]
    disabled_channels: tuple[str, ...] = ()

    def enabled_channels(self) -> tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]:
        """Channels switched on (``when_env`` set, ``enabled`` true); only these are validated."""
        return self.channels

    def channels_for(
        self, watchlist: Watchlist | str
    ) -> tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]:
        """The enabled channels a watch-list sends to ("all" expands to every one)."""
        wl = self.watchlist(watchlist) if isinstance(watchlist, str) else watchlist
        if "all" in wl.channels:
            return self.channels
        return tuple(ch for ch in self.channels if ch.name in wl.channels)

    def signal(self, name: str) -> SignalDef:
        """The signal called ``name``; KeyError if there is none."""
        return _by_name(self.signals, name)

    def region(self, name: str) -> RegionDef:
        """The region called ``name``; KeyError if there is none."""
        return _by_name(self.regions, name)

    def watchlist(self, name: str) -> Watchlist:
        """The watch-list called ``name``; KeyError if there is none."""
        return _by_name(self.watchlists, name)

    def escalation_signals(self) -> tuple[str, ...]:
        """Names of every escalation signal, in file order."""
        return tuple(s.name for s in self.signals if s.direction == "escalation")


_Named = TypeVar("_Named", SignalDef, RegionDef, Watchlist)


def _by_name(items: tuple[_Named, ...], name: str) -> _Named:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


SCHEMAS: dict[str, type[BaseModel]] = {
    "feeds.schema.json": FeedsFile,
    "signals.schema.json": SignalsFile,
    "regions.schema.json": RegionsFile,
    "watchlist.schema.json": Watchlist,
    "channels.schema.json": ChannelsFile,
}


def schema_text(model: type[BaseModel]) -> str:
    """The JSON Schema of one config file, as stable, pretty-printed text."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    """Write a JSON Schema per config file kind into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, model in SCHEMAS.items():
        path = out_dir / filename
        path.write_text(schema_text(model), encoding="utf-8")
        written.append(path)
    return written


class _ConfigLoader(DocReader):
    """The config/-specific parts: channels switched by env, one watch-list per file."""

    def load_channels(self) -> tuple[list[ConsoleChannel | EmailChannel | SlackChannel], list[str]]:
        """Validate enabled channels fully; check only the shape of disabled ones."""
        doc = self.read(self.root / "channels.yaml")
        if doc is None:
            return [], []
        enabled: list[ConsoleChannel | EmailChannel | SlackChannel] = []
        disabled: list[str] = []
        names: list[tuple[Loc, str]] = []
        for loc, raw in self.items(doc, "channels"):
            model = self.channel_model(doc, loc, raw)
            if model is None:
                continue
            if isinstance(raw.get("name"), str):
                names.append((loc, raw["name"]))
            if self.channel_enabled(raw):
                channel = self.validate(doc, loc, model, self.interpolate(doc, loc, raw))
                enabled.extend([channel] if channel is not None else [])
                continue
            disabled.append(str(raw.get("name")))
            for key in raw:
                if key not in model.model_fields:
                    self.add(
                        doc,
                        (*loc, key),
                        f"unknown field '{key}'",
                        fields_hint(model, (key,), str(key)),
                    )
        self.check_unique(doc, names, "name")
        for loc, name in names:
            if name == "all":
                self.add(
                    doc,
                    (*loc, "name"),
                    "'all' is reserved",
                    'watch-lists use channels: ["all"] for every channel',
                )
        return enabled, disabled

    def channel_model(
        self, doc: Doc, loc: Loc, raw: Any
    ) -> type[ConsoleChannel | EmailChannel | SlackChannel] | None:
        """The model for a channel entry's ``type``, or a problem."""
        if not isinstance(raw, dict):
            self.add(
                doc,
                loc,
                f"expected a mapping of fields, got {describe(raw)}",
                "write fields as 'key: value' lines",
            )
            return None
        kind = raw.get("type")
        model = CHANNEL_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            self.add(
                doc,
                (*loc, "type"),
                f"unknown or missing channel type {kind!r}",
                "type: one of " + ", ".join(CHANNEL_TYPES),
            )
        return model

    def channel_enabled(self, raw: dict[str, Any]) -> bool:
        """Off when ``enabled: false`` or when its ``when_env`` variable is empty or unset."""
        if raw.get("enabled", True) is False:
            return False
        var = raw.get("when_env")
        return not isinstance(var, str) or bool(self.env.get(var, "").strip())

    def load_watchlists(self) -> list[tuple[Doc, Watchlist]]:
        """Every watch-list file in config/watchlists/, one watch-list per file."""
        folder = self.root / "watchlists"
        paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
        if not paths:
            self.add(
                str(folder),
                "",
                "no watch-lists found",
                "add at least one file such as watchlists/middle-east.yaml",
            )
        found: list[tuple[Doc, Watchlist]] = []
        for path in paths:
            doc = self.read(path)
            if doc is None:
                continue
            if not isinstance(doc.data, dict):
                self.add(
                    doc,
                    "",
                    f"expected a mapping of watch-list fields, got {describe(doc.data)}",
                    "see config/watchlists/middle-east.yaml",
                )
                continue
            raw = {"name": path.stem, **self.interpolate(doc, (), doc.data)}
            watchlist = self.validate(doc, (), Watchlist, raw)
            if watchlist is not None:
                found.append((doc, watchlist))
        return found

    def check_references(
        self, doc: Doc, wl: Watchlist, field: str, known: list[str], what: str
    ) -> None:
        """Every name in ``wl.<field>`` must exist; the hint lists near matches."""
        for i, name in enumerate(getattr(wl, field)):
            if name in known or (field == "channels" and name == "all"):
                continue
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            self.add(
                doc,
                (field, i),
                f"unknown {what} {name!r}",
                hint + f"known: {', '.join(known) or 'none'}",
            )


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate everything under ``root``; raise ConfigError listing every problem.

    All or nothing: on any problem nothing is returned, so a reloading daemon keeps
    its last good config. ``env`` (default ``os.environ``) feeds ${VAR} interpolation
    and the channels' ``when_env`` switches.
    """
    loader = _ConfigLoader(root, os.environ if env is None else env)
    feeds = loader.load_list("feeds.yaml", "feeds", FeedConfig, ("url", "name"))
    signals = loader.load_list("signals.yaml", "signals", SignalDef, ("name",))
    regions = loader.load_list("regions.yaml", "regions", RegionDef, ("name",))
    channels, disabled = loader.load_channels()
    found = loader.load_watchlists()
    failed = set(loader.failed)
    for doc, wl in found:
        for field, items, what, file in (
            ("regions", [r.name for r in regions], "region", "regions.yaml"),
            ("signals", [s.name for s in signals], "signal", "signals.yaml"),
            ("channels", [c.name for c in channels] + disabled, "channel", "channels.yaml"),
        ):
            if str(root / file) not in failed:  # else the real problem is already reported
                loader.check_references(doc, wl, field, items, what)
    first: dict[str, str] = {}
    for doc, wl in found:
        if wl.name in first:
            loader.add(
                doc,
                ("name",),
                f"watch-list name {wl.name!r} is also used by {first[wl.name]}",
                "set a different name: in one of the files",
            )
        first.setdefault(wl.name, doc.file)
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(
        root,
        tuple(feeds),
        tuple(signals),
        tuple(regions),
        tuple(wl for _, wl in found),
        tuple(channels),
        tuple(disabled),
    )
