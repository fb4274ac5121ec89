"""Import feeds from an OPML subscription list into config/feeds.yaml, appending as text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.parsers import expat

import structlog
import yaml

from monitor.config import check_feed_url
from monitor.errors import ConfigError, Problem

log = structlog.get_logger(__name__)

MAX_OPML_BYTES = 5 * 1024 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass
class OpmlFeed:
    """One outline with an xmlUrl, and the folder titles above it."""

    url: str
    title: str
    tags: list[str] = field(default_factory=list)
    lang: str | None = None


def _refuse(*_: Any) -> int:
    # Entity declarations are how billion-laughs and external-entity attacks start;
    # no real OPML file needs them.
    raise ValueError("entity declarations are not allowed in OPML")


def parse_opml(data: bytes, source: str = "OPML") -> list[OpmlFeed]:
    """The feed outlines of an OPML document; ConfigError when it is not safe, readable OPML."""
    feeds: list[OpmlFeed] = []
    folders: list[str | None] = []
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag != "outline":
            return
        title = _clean(attrs.get("title") or attrs.get("text") or "")
        url = attrs.get("xmlUrl") or attrs.get("xmlurl")
        if url:
            lang = (attrs.get("language") or "")[:2].lower()
            tags = [t for t in folders if t]
            feeds.append(OpmlFeed(url.strip(), title, tags, lang if lang in ("en", "ar") else None))
        folders.append(None if url else title)

    def end(tag: str) -> None:
        if tag == "outline" and folders:
            folders.pop()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, ValueError) as exc:
        raise ConfigError(
            [
                Problem(
                    source,
                    "",
                    f"cannot read the OPML: {exc}",
                    "export it again from your feed reader",
                )
            ]
        ) from exc
    return feeds


def _clean(text: str) -> str:
    return " ".join(_UNSAFE.sub(" ", text).split())


def import_opml(opml_path: Path, feeds_yaml: Path) -> list[str]:
    """Append the OPML's feeds that feeds.yaml lacks (by URL); return the names added."""
    data = opml_path.read_bytes()
    if len(data) > MAX_OPML_BYTES:
        raise ConfigError([Problem(str(opml_path), "", "the OPML file is larger than 5 MB")])
    text = feeds_yaml.read_text(encoding="utf-8") if feeds_yaml.exists() else ""
    urls, names = _existing(text, feeds_yaml)
    entries: list[dict[str, Any]] = []
    for feed in parse_opml(data, str(opml_path)):
        entry = _entry(feed, urls, names)
        if entry is not None:
            entries.append(entry)
    if entries:
        _write(feeds_yaml, text, entries)
    return [str(e["name"]) for e in entries]


def _existing(text: str, path: Path) -> tuple[set[str], set[str]]:
    try:
        data = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    "",
                    "cannot read feeds.yaml to merge into it",
                    "fix it first: spillover check",
                )
            ]
        ) from exc
    items = data.get("feeds") if isinstance(data, dict) else None
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    urls = {_url_key(str(i.get("url", ""))) for i in items}
    names = {str(i.get("name", "")).casefold() for i in items}
    return urls, names


def _url_key(url: str) -> str:
    return url.strip().rstrip("/").casefold()


def _entry(feed: OpmlFeed, urls: set[str], names: set[str]) -> dict[str, Any] | None:
    try:
        check_feed_url(feed.url)
    except ValueError as exc:
        host = urlsplit(feed.url).hostname if "@" not in feed.url else "<hidden>"
        log.warning("opml_feed_skipped", host=host, reason=str(exc))
        return None
    if _url_key(feed.url) in urls:
        return None
    base = feed.title or (urlsplit(feed.url).netloc + urlsplit(feed.url).path).rstrip("/")
    name, n = base, 2
    while name.casefold() in names:
        name, n = f"{base} ({n})", n + 1
    urls.add(_url_key(feed.url))
    names.add(name.casefold())
    entry: dict[str, Any] = {"url": feed.url, "name": name}
    if feed.lang:
        entry["lang"] = feed.lang
    if feed.tags:
        entry["tags"] = feed.tags
    return entry


def _write(path: Path, text: str, entries: list[dict[str, Any]]) -> None:
    """Append entries under a trailing block ``feeds:`` list; else rewrite (comments lost)."""
    indent = _append_indent(text)
    if indent is None:
        data = yaml.safe_load(text) if text.strip() else {}
        data = data if isinstance(data, dict) else {}
        data["feeds"] = [*(data.get("feeds") or []), *entries]
        new = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    else:
        new = text + ("" if text.endswith("\n") else "\n") + _render(entries, indent)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a feeds.yaml


def _append_indent(text: str) -> str | None:
    """The indent of the ``- `` items when ``feeds:`` is the last, block-style key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode) or not node.value:
        return None
    key, value = node.value[-1]
    if key.value != "feeds" or not isinstance(value, yaml.SequenceNode) or value.flow_style:
        return None
    if not value.value:
        return None
    return " " * value.start_mark.column


def _render(entries: list[dict[str, Any]], indent: str) -> str:
    # JSON strings are valid YAML double-quoted scalars: safe for any title.
    lines = []
    for entry in entries:
        lines.append(f"{indent}- url: {json.dumps(entry['url'])}")
        lines.append(f"{indent}  name: {json.dumps(entry['name'], ensure_ascii=False)}")
        if "lang" in entry:
            lines.append(f"{indent}  lang: {entry['lang']}")
        if "tags" in entry:
            tags = ", ".join(json.dumps(t, ensure_ascii=False) for t in entry["tags"])
            lines.append(f"{indent}  tags: [{tags}]")
    return "\n".join(lines) + "\n"
