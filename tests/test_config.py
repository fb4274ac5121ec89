"""Tests for monitor.config: validation table, all-at-once reporting, env, anchors, schemas."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.config import (
    SCHEMAS,
    EmailChannel,
    SlackChannel,
    load_config,
    parse_duration,
    schema_text,
    write_schemas,
)
from monitor.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config"

MINIMAL_SIGNALS = """\
signals:
  - name: drone-strike
    direction: escalation
    weight: 1.5
    description: {en: Drone attacks, ar: هجمات بطائرات مسيرة}
    examples: {en: [A drone hit the base], ar: [طائرة مسيرة تستهدف القاعدة]}
  - name: ceasefire
    direction: de-escalation
    weight: 1
    description: {en: Ceasefire, ar: وقف إطلاق النار}
    examples: {en: [A truce was agreed], ar: [اتفاق على هدنة]}
"""

BASE = {
    "feeds.yaml": "feeds:\n  - url: https://example.org/feed.xml\n    name: Example\n",
    "signals.yaml": MINIMAL_SIGNALS,
    "regions.yaml": """\
regions:
  - name: lebanon
    label: {en: Lebanon, ar: لبنان}
    names: {en: [Lebanon, Beirut], ar: [لبنان, بيروت]}
  - name: iraq
    label: {en: Iraq, ar: العراق}
    names: {en: [Iraq], ar: [العراق]}
""",
    "channels.yaml": "channels:\n  - name: console\n    type: console\n",
    "watchlists/levant.yaml": "regions: [lebanon]\nkeywords: [ground offensive]\n",
}


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write a config tree under root from relative path -> content."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def problems_of(root: Path, env: dict[str, str] | None = None) -> list[str]:
    """The rendered problems load_config raises for root (fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_config(root, env=env or {})
    return [str(p) for p in info.value.problems]


def test_minimal_tree_loads(tmp_path: Path) -> None:
    """The base tree used by the table is valid, and its defaults are applied."""
    config = load_config(write_tree(tmp_path, BASE), env={})
    assert [f.name for f in config.feeds] == ["Example"]
    (watchlist,) = config.watchlists
    assert watchlist.name == "levant"
    assert watchlist.min_score == 0.5
    assert watchlist.cooldown == 3600
    assert watchlist.channels == ["all"]


FEED = "feeds:\n  - url: https://example.org/feed.xml\n    name: Example\n"
WL = "watchlists/levant.yaml"

# (file, content, expected location substring, expected text in message or hint)
CASES = [
    (
        "feeds.yaml",
        "feeds:\n  - url: ftp://example.org/f\n",
        "feeds[0].url (line 2)",
        "only http and https",
    ),
    ("feeds.yaml", "feeds:\n  - url: /etc/feed.xml\n", "feeds[0].url", "bare path"),
    ("feeds.yaml", "feeds:\n  - url: https://example.org\\feed\n", "feeds[0].url", "backslashes"),
    (
        "feeds.yaml",
        "feeds:\n  - url: https://u:p4ss@example.org/f\n",
        "feeds[0].url",
        "user name or password",
    ),
    (
        "feeds.yaml",
        FEED + "    interval: 5 minutes\n",
        "feeds[0].interval (line 4)",
        "not a duration",
    ),
    ("feeds.yaml", FEED + "    interval: 10\n", "feeds[0].interval", "greater than or equal to 30"),
    ("feeds.yaml", FEED + "    lang: fr\n", "feeds[0].lang", "'en' or 'ar'"),
    (
        "feeds.yaml",
        FEED + "    intervall: 60\n",
        "feeds[0].intervall (line 4)",
        "did you mean 'interval'",
    ),
    (
        "feeds.yaml",
        FEED + "  - url: https://example.org/feed.xml\n",
        "feeds[1].url (line 4)",
        "duplicate url",
    ),
    (
        "feeds.yaml",
        FEED + "  - url: https://example.org/b\n    name: example\n",
        "feeds[1].name",
        "duplicate name",
    ),
    (
        "feeds.yaml",
        "feeds:\n  - https://example.org/feed.xml\n",
        "feeds[0] (line 2)",
        "expected a mapping",
    ),
    ("feeds.yaml", "feeds: []\n", "feeds", "non-empty list"),
    ("feeds.yaml", FEED + "feed: 1\n", "feed (line 4)", "unknown top-level key"),
    ("feeds.yaml", "- url: https://example.org/f\n", "", "expected a mapping with 'feeds:'"),
    ("feeds.yaml", "", "", "file is empty"),
    ("feeds.yaml", "# only a comment\n", "", "file is empty"),
    ("feeds.yaml", 'feeds:\n  - url: "https://exa', "line 2", "YAML syntax error"),
    ("feeds.yaml", "feeds:\n  - url: [https://a\n    name: x\n", "line", "YAML syntax error"),
    (
        "feeds.yaml",
        FEED + "    url: https://example.org/other\n",
        "feeds[0].url",
        "duplicate key 'url'",
    ),
    ("feeds.yaml", b"feeds:\n  - url: https://example.org/\xff\n", "", "not UTF-8"),
    (
        "feeds.yaml",
        "base: &b {url: https://e.org/x}\nfeeds:\n  - *b\n",
        "line 1",
        "anchors and aliases",
    ),
    (WL, "regions: [lebanonn]\n", "regions[0] (line 1)", "did you mean lebanon"),
    (WL, "signals: [drone-strikes]\n", "signals[0]", "unknown signal 'drone-strikes'"),
    (WL, "channels: [pager]\n", "channels[0]", "unknown channel 'pager'"),
    (
        WL,
        "keywords:\n  - ok\n  - [ground, offensive]\n",
        "keywords[1] (line 3)",
        'quote multi-word phrases, e.g. - "ground offensive"',
    ),
    (WL, "keywords:\n  - no\n", "keywords[0] (line 2)", "quote it"),
    (WL, "keywords:\n  - 1701\n", "keywords[0]", 'quote it: "1701"'),
    (WL, "keywords:\n  - '!!!'\n", "keywords[0]", "no letters or digits"),
    (WL, "patterns:\n  - '(a'\n", "patterns", "invalid pattern '(a'"),
    (WL, "patterns:\n  - '(\\w+) \\1'\n", "patterns", "invalid pattern"),
    (WL, "patterns:\n  - 'x*'\n", "patterns", "matches empty text"),
    (WL, "min_score: 1.5\n", "min_score (line 1)", "less than or equal to 1"),
    (WL, "corroboration: 0\n", "corroboration", "greater than or equal to 1"),
    (WL, "cooldown: soon\n", "cooldown", "not a duration"),
    (WL, "quiet_hours: {start: 22:00, end: '06:00'}\n", "quiet_hours.start", "quote it"),
    (WL, "quiet_hours: {start: '22:00', end: '25:00'}\n", "quiet_hours.end", "HH:MM"),
    (
        WL,
        "quiet_hours: {start: '22:00', end: '06:00', tz: Mars/Base}\n",
        "quiet_hours.tz",
        "unknown time zone",
    ),
    (WL, "digest: weekly\n", "digest", "'none', 'hourly' or 'daily'"),
    (WL, "regionz: [iraq]\n", "regionz", "did you mean 'regions'"),
    (WL, "- iraq\n", "", "expected a mapping of watch-list fields"),
    (
        "regions.yaml",
        BASE["regions.yaml"].replace("name: iraq", "name: Red Sea"),
        "regions[1].name",
        "kebab-case",
    ),
    (
        "regions.yaml",
        BASE["regions.yaml"].replace("name: iraq", "name: lebanon"),
        "regions[1].name",
        "duplicate name",
    ),
    (
        "regions.yaml",
        BASE["regions.yaml"].replace("label: {en: Iraq, ar: العراق}", "label: {en: Iraq}"),
        "regions[1].label.ar",
        "missing required field 'ar'",
    ),
    (
        "signals.yaml",
        MINIMAL_SIGNALS.replace("weight: 1.5", "weight: 5"),
        "signals[0].weight (line 4)",
        "less than or equal to 3",
    ),
    (
        "signals.yaml",
        MINIMAL_SIGNALS.replace("ar: [طائرة مسيرة تستهدف القاعدة]", "ar: []"),
        "signals[0].examples.ar",
        "at least 1 item",
    ),
    (
        "signals.yaml",
        MINIMAL_SIGNALS.replace("direction: escalation", "direction: up"),
        "signals[0].direction",
        "'escalation' or 'de-escalation'",
    ),
    (
        "channels.yaml",
        "channels:\n  - name: pager\n    type: pager\n",
        "channels[0].type",
        "one of console, email, slack",
    ),
    (
        "channels.yaml",
        "channels:\n  - name: all\n    type: console\n",
        "channels[0].name",
        "'all' is reserved",
    ),
    (
        "channels.yaml",
        "channels:\n  - {name: s, type: slack, webhook_url: 'http://x.test/T1/SECRETTOKEN'}\n",
        "channels[0].webhook_url",
        "must be an https://",
    ),
    (
        "channels.yaml",
        "channels:\n  - {name: m, type: email, host: h, sender: a@b.c,"
        " recipients: 'ok@x.org, nope'}\n",
        "channels[0].recipients[1]",
        "addresses like",
    ),
    (
        "channels.yaml",
        "channels:\n  - {name: m, type: email, host: h, sender: a@b.c,"
        " recipients: [a@b.c], tls: ssl}\n",
        "channels[0].tls",
        "'starttls', 'implicit' or 'none'",
    ),
    (
        "channels.yaml",
        "channels:\n  - {name: c, type: console}\n  - {name: c, type: console}\n",
        "channels[1].name",
        "duplicate name",
    ),
]


@pytest.mark.parametrize(("file", "content", "where", "text"), CASES)
def test_bad_input_reports_location_and_hint(
    tmp_path: Path, file: str, content: str | bytes, where: str, text: str
) -> None:
    """Each bad input is reported with its file, location (and line) and a helpful hint."""
    write_tree(tmp_path, {**BASE, file: content})
    found = [p for p in problems_of(tmp_path) if f"{tmp_path / file}: {where}" in p]
    assert any(text in p for p in found), problems_of(tmp_path)


def test_secret_never_in_messages(tmp_path: Path) -> None:
    """Neither a webhook token nor a password from a feed URL appears in any problem."""
    write_tree(tmp_path, {**BASE, "channels.yaml": CASES[-4][1], "feeds.yaml": CASES[3][1]})
    text = "\n".join(problems_of(tmp_path))
    assert "SECRETTOKEN" not in text and "p4ss" not in text
    assert "webhook_url" in text and "user name or password" in text


def test_every_problem_across_files_is_reported_at_once(tmp_path: Path) -> None:
    """Problems in feeds, regions, channels and two watch-lists all come back in one error."""
    write_tree(
        tmp_path,
        {
            **BASE,
            "feeds.yaml": "feeds:\n  - url: ftp://x/y\n  - url: https://ok.test/f\n    lang: de\n",
            "regions.yaml": BASE["regions.yaml"].replace("name: iraq", "name: IRAQ"),
            "channels.yaml": "channels:\n  - name: c\n    type: telegram\n",
            "watchlists/a.yaml": "min_score: 2\n",
            "watchlists/b.yaml": "regions: [narnia]\ndigest: weekly\n",
        },
    )
    found = problems_of(tmp_path)
    files = {p.split(": ")[0] for p in found}
    assert files == {
        str(tmp_path / f)
        for f in (
            "feeds.yaml",
            "regions.yaml",
            "channels.yaml",
            "watchlists/a.yaml",
            "watchlists/b.yaml",
        )
    }
    # b.yaml's unknown region is not checked: regions.yaml itself is broken, and a
    # reference check against half a gazetteer would only add noise.
    assert len(found) == 6


def test_missing_files_are_problems(tmp_path: Path) -> None:
    """A missing file or an empty watchlists/ folder is named, not a traceback."""
    files = {k: v for k, v in BASE.items() if k not in ("regions.yaml", WL)}
    found = problems_of(write_tree(tmp_path, files))
    assert any(p.startswith(f"{tmp_path / 'regions.yaml'}: file not found") for p in found)
    assert any("no watch-lists found" in p for p in found)


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """A billion-laughs document is refused at the first anchor, without expanding it."""
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    write_tree(tmp_path, {**BASE, "feeds.yaml": bomb})
    started = time.monotonic()
    found = problems_of(tmp_path)
    assert time.monotonic() - started < 2
    assert any("feeds.yaml: line 1: YAML anchors and aliases" in p for p in found)


EMAIL = """\
channels:
  - name: console
    type: console
  - name: email
    type: email
    when_env: SMTP_HOST
    host: ${SMTP_HOST}
    port: ${SMTP_PORT:-2525}
    password: ${SMTP_PASSWORD:-}
    sender: ${MAIL_FROM}
    recipients: ${MAIL_TO}
  - name: slack
    type: slack
    when_env: HOOK
    webhook_url: ${HOOK}
"""


def test_when_env_unset_disables_channel_and_skips_its_variables(tmp_path: Path) -> None:
    """With the switch variable unset, a channel is disabled and its unset ${VAR}s are fine."""
    config = load_config(write_tree(tmp_path, {**BASE, "channels.yaml": EMAIL}), env={})
    assert [c.name for c in config.enabled_channels()] == ["console"]
    assert config.disabled_channels == ("email", "slack")


def test_enabled_channel_interpolates_env(tmp_path: Path) -> None:
    """${VAR}/${VAR:-default} fill values; comma text becomes recipients; blank password is None."""
    env = {"SMTP_HOST": "smtp.test", "MAIL_FROM": "desk@ngo.test", "MAIL_TO": "a@x.test, b@y.test"}
    config = load_config(write_tree(tmp_path, {**BASE, "channels.yaml": EMAIL}), env=env)
    email = config.channels[1]
    assert isinstance(email, EmailChannel)
    assert (email.host, email.port, email.password) == ("smtp.test", 2525, None)
    assert email.recipients == ["a@x.test", "b@y.test"]
    assert [c.name for c in config.channels_for("levant")] == ["console", "email"]


def test_enabled_channel_with_unset_variable_names_it(tmp_path: Path) -> None:
    """An unset variable in an enabled channel is one problem naming file, location and variable."""
    write_tree(tmp_path, {**BASE, "channels.yaml": EMAIL})
    found = problems_of(tmp_path, env={"SMTP_HOST": "smtp.test", "MAIL_TO": "a@x.test"})
    assert found == [
        f"{tmp_path / 'channels.yaml'}: channels[1].sender (line 10): environment variable "
        "MAIL_FROM is not set\n  hint: export MAIL_FROM=…, or write ${MAIL_FROM:-default}"
    ]


def test_secret_from_env_stays_secret(tmp_path: Path) -> None:
    """A webhook from the environment is a SecretStr and never shows in repr or errors."""
    hook = "https://hooks.slack.com/services/T000/B000/XYZSECRET"
    config = load_config(write_tree(tmp_path, {**BASE, "channels.yaml": EMAIL}), env={"HOOK": hook})
    slack = config.channels[-1]
    assert isinstance(slack, SlackChannel)
    assert slack.webhook_url.get_secret_value() == hook
    assert "XYZSECRET" not in repr(config)
    write_tree(tmp_path, {"channels.yaml": EMAIL.replace("${HOOK}", "http://${HOOK}")})
    assert all("XYZSECRET" not in p for p in problems_of(tmp_path, env={"HOOK": "XYZSECRET"}))


def test_dollar_dollar_escapes_interpolation(tmp_path: Path) -> None:
    """$${ writes a literal ${ (e.g. inside a pattern) instead of reading a variable."""
    write_tree(tmp_path, {**BASE, WL: "regions: [lebanon]\npatterns: ['cost $${5}']\n"})
    assert load_config(tmp_path, env={}).watchlists[0].patterns == ["cost ${5}"]


def test_duplicate_watchlist_names_across_files(tmp_path: Path) -> None:
    """Two files declaring the same watch-list name are reported on the second file."""
    write_tree(tmp_path, {**BASE, "watchlists/other.yaml": "name: levant\n"})
    assert any(
        "watchlists/other.yaml: name" in p and "also used by" in p for p in problems_of(tmp_path)
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300),
        ("300", 300),
        ("45s", 45),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
    ],
)
def test_durations(value: int | str, seconds: int) -> None:
    """Durations accept seconds or unit strings."""
    assert parse_duration(value) == seconds


def test_config_helpers(tmp_path: Path) -> None:
    """signal(), region(), escalation_signals() and channels_for() answer from the loaded config."""
    config = load_config(write_tree(tmp_path, BASE), env={})
    assert config.signal("ceasefire").direction == "de-escalation"
    assert config.escalation_signals() == ("drone-strike",)
    assert config.region("iraq").label.ar == "العراق"
    assert [c.name for c in config.channels_for(config.watchlists[0])] == ["console"]
    with pytest.raises(KeyError):
        config.signal("nope")


def shipped_copy(tmp_path: Path) -> Path:
    """The shipped config/ copied to tmp, with a minimal signals.yaml only if none is shipped."""
    root = tmp_path / "config"
    shutil.copytree(SHIPPED, root)
    if not (root / "signals.yaml").exists():
        (root / "signals.yaml").write_text(MINIMAL_SIGNALS, encoding="utf-8")
    return root


def test_shipped_config_validates(tmp_path: Path) -> None:
    """Every shipped file in config/ validates, with and without the optional channels on."""
    root = shipped_copy(tmp_path)
    config = load_config(root, env={})
    assert [c.name for c in config.channels] == ["console"]
    assert len(config.feeds) >= 10 and {f.lang for f in config.feeds} == {"en", "ar"}
    env = {
        "SPILLOVER_SMTP_HOST": "smtp.test",
        "SPILLOVER_EMAIL_FROM": "s@x.test",
        "SPILLOVER_EMAIL_TO": "a@x.test,b@x.test",
        "SPILLOVER_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
    }
    assert [c.name for c in load_config(root, env=env).channels] == ["console", "email", "slack"]
    watchlist = config.watchlist("middle-east")
    assert set(watchlist.regions) == {r.name for r in config.regions}
    assert watchlist.signals == [] and watchlist.channels == ["all"]


def test_shipped_yaml_points_editors_at_schemas() -> None:
    """Each shipped YAML starts with a yaml-language-server comment naming an existing schema."""
    for path in [*SHIPPED.glob("*.yaml"), *SHIPPED.glob("watchlists/*.yaml")]:
        if path.name == "signals.yaml":
            continue  # owned by the classifier
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / first.split("=", 1)[1]).is_file(), path


def test_write_schemas_and_shipped_schemas_are_current(tmp_path: Path) -> None:
    """write_schemas writes valid JSON Schema files identical to those shipped in config/schema/."""
    written = write_schemas(tmp_path)
    assert [p.name for p in written] == list(SCHEMAS)
    for path in written:
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert schema["$schema"].endswith("2020-12/schema")
        assert schema["additionalProperties"] is False
        assert path.read_text(encoding="utf-8") == (SHIPPED / "schema" / path.name).read_text(
            encoding="utf-8"
        ), f"run write_schemas(Path('config/schema')) to refresh {path.name}"


def test_every_field_is_documented() -> None:
    """Every field of every config model has a description (it feeds editor tooltips)."""

    def visit(schema: dict[str, Any], where: str) -> None:
        for sub in schema.get("$defs", {}).values():
            visit(sub, where)
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{where}: {name} has no description"

    for name, model in SCHEMAS.items():
        visit(json.loads(schema_text(model)), name)
