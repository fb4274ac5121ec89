"""Feed bytes to Articles: feedparser on neutralised UTF-8 bytes; every field cleaned, bounded."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import structlog

from monitor.analysis.language import detect_language
from monitor.errors import ParseError
from monitor.feeds.charset import declare_utf8, decode_feed
from monitor.feeds.text import clean_line, collapse, html_to_text, strip_invisible, truncate
from monitor.models import Article

log = structlog.get_logger(__name__)

TITLE_LIMIT = 1_000
SUMMARY_LIMIT = 5_000
GUID_LIMIT = 512
LINK_LIMIT = 2_048
AUTHOR_LIMIT = 200
MAX_AUTHORS = 20
OLDEST = datetime(1990, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=2)

# A DTD or entity declaration opens here; its end is found by _declaration_end.
_DECLARATION = re.compile(r"<!(?:DOCTYPE|ENTITY)\b", re.IGNORECASE)
_DECL_TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|[\[\]>]")
# XML forbids these; removing them keeps expat (the strict parser) usable.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b-\x1f\ufffe\uffff]")
_ITEM_START = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?(?:item|entry)[\s>/]")
_ITEM_END = re.compile(r"</(?:[A-Za-z_][\w.-]*:)?(?:item|entry)\s*>")
_ROOT_END = re.compile(r"</(?:[A-Za-z_][\w.-]*:)?(?:rss|feed|RDF)\s*>")
_HTML_START = re.compile(
    r"\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b",
    re.IGNORECASE | re.DOTALL,
)
_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")
_WEB_SCHEMES = ("http", "https")


def _declaration_end(text: str, start: int) -> int:
    """Index just past the declaration at ``start``, skipping quotes and an [internal subset]."""
    depth = 0
    for token in _DECL_TOKEN.finditer(text, start):
        char = token.group(0)
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == ">" and depth == 0:
            return token.end()
    return len(text)  # unterminated: everything after it is part of the hostile declaration


def neutralise_dtd(text: str) -> str:
    """Remove every DOCTYPE (with its internal subset) and ENTITY declaration.

    Nothing is then left to expand (billion laughs, a huge entity referenced many times)
    or to fetch or read (external entities and DTDs); references to removed entities stay
    as harmless literal text.
    """
    parts: list[str] = []
    pos = 0
    while (match := _DECLARATION.search(text, pos)) is not None:
        parts.append(text[pos : match.start()])
        pos = _declaration_end(text, match.start())
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def cap_items(text: str, max_items: int) -> str:
    """The document with only its first ``max_items`` items/entries, so parse time stays bounded."""
    starts = _ITEM_START.finditer(text)
    cut = None
    for index, match in enumerate(starts):
        if index == max_items:
            cut = match.start()
            break
    if cut is None:
        return text
    ends = [m.end() for m in _ITEM_END.finditer(text, cut)]
    tail = text[ends[-1] :] if ends else ""
    return text[:cut] + tail


def prepare(content: bytes, content_type: str | None, max_items: int) -> tuple[str, str]:
    """(safe UTF-8 document text, detected encoding) ready for feedparser."""
    decoded = decode_feed(content, content_type)
    text = _XML_ILLEGAL.sub("", decoded.text.replace("\r\n", "\n").replace("\r", "\n"))
    text = neutralise_dtd(text)
    text = cap_items(text, max_items)
    return declare_utf8(text), decoded.encoding


def _run_feedparser(text: str) -> Any:
    """Run feedparser on in-memory UTF-8 bytes (never a URL or path: it would fetch or open it)."""
    # No content-location: feedparser would resolve relative guids against it, making the
    # same guid differ between feeds; links are resolved in safe_link instead.
    headers = {"content-type": "application/xml; charset=utf-8"}
    stream = io.BytesIO(text.encode("utf-8", errors="replace"))
    return feedparser.parse(stream, sanitize_html=False, resolve_relative_uris=False,
                            response_headers=headers)


def _snippet(text: str) -> str:
    """The start of the body, printable and short, for an error message."""
    return repr(collapse(strip_invisible(text[:200]))[:60])


def _reject(feed_name: str, text: str, content_type: str | None, result: Any) -> None:
    """Raise ParseError when a result without entries is not an empty feed."""
    ctype = (content_type or "").lower()
    if _HTML_START.match(text[:4096]) or ("html" in ctype and not result.get("version")):
        raise ParseError(feed_name, "not an RSS/Atom feed (got an HTML page: is it behind a login "
                         "or bot challenge? check the URL in a browser)")
    if not result.get("version"):
        raise ParseError(feed_name, "not an RSS/Atom feed (no <rss>, <feed> or <rdf:RDF> root; "
                         f"body starts with {_snippet(text)})")
    if result.get("bozo") and not _ROOT_END.search(text[-4096:]):
        reason = str(result.get("bozo_exception", "unknown error"))[:200]
        raise ParseError(feed_name, f"truncated or malformed feed XML ({reason}); "
                         "the server may have cut the response short")


def parse_feed(content: bytes, *, feed_name: str, feed_url: str, content_type: str | None = None,
               lang_hint: str | None = None, max_items: int = 5000) -> list[Article]:
    """Articles of one feed body, newest-first order kept, at most ``max_items``.

    Raises ParseError (naming the feed) when the bytes are not a usable RSS/Atom feed;
    a slightly broken feed whose entries could be read is accepted.
    """
    if not content.strip():
        raise ParseError(feed_name, "empty response body (expected RSS or Atom XML)")
    text, encoding = prepare(content, content_type, max_items)
    try:
        result = _run_feedparser(text)
    except (ValueError, TypeError, LookupError, RecursionError) as exc:
        raise ParseError(feed_name, f"feedparser failed: {type(exc).__name__}: {exc}") from exc
    entries = result.get("entries") or []
    if not entries:
        _reject(feed_name, text, content_type, result)
        return []
    if result.get("bozo"):
        log.info("feed_bozo", feed=feed_name, encoding=encoding,
                 error=str(result.get("bozo_exception"))[:200])
        entries = _complete_entries(feed_name, text, entries)
    now = datetime.now(UTC)
    articles = []
    for entry in entries[:max_items]:
        article = to_article(entry, feed_name=feed_name, feed_url=feed_url, lang_hint=lang_hint,
                             now=now)
        if article is not None:
            articles.append(article)
    return articles


def _complete_entries(feed_name: str, text: str, entries: list[Any]) -> list[Any]:
    """Entries of a cut-off document (no closing root tag) that were closed before the cut.

    A body cut mid-item (a lying Content-Length, a proxy limit) would otherwise yield a
    half article: a title without its end, a link without a title.
    """
    if _ROOT_END.search(text[-4096:]):
        return entries
    closed = sum(1 for _ in _ITEM_END.finditer(text))
    if closed == 0:
        raise ParseError(feed_name, "truncated feed XML: the body ends inside the first item; "
                         "the server may have cut the response short")
    return entries[:closed]


def to_article(entry: Mapping[str, Any], *, feed_name: str, feed_url: str,
               lang_hint: str | None, now: datetime) -> Article | None:
    """One cleaned Article from a feedparser entry, or None when it has no title, text or link."""
    title = _text_field(entry, "title", TITLE_LIMIT)
    summary = _summary(entry)
    link = safe_link(_str(entry.get("link")), feed_url)
    if not (title or summary or link):
        return None
    article = Article(
        id=entry_id(_str(entry.get("id")), link, title, summary),
        feed=feed_name,
        feed_url=feed_url,
        title=title,
        summary=summary,
        link=link,
        published=published_at(entry, now),
        authors=_authors(entry),
        lang_hint=lang_hint,
    )
    # Detected here, in the parser worker: ~3.6 ms an article would stall the event loop.
    return article.model_copy(update={"lang": detect_language(article.text, hint=lang_hint)})


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _text_field(entry: Mapping[str, Any], key: str, limit: int) -> str:
    """A plain-text field: markup stripped only when feedparser says the value is HTML."""
    value = _str(entry.get(key))
    detail = entry.get(f"{key}_detail")
    kind = _str(detail.get("type")) if isinstance(detail, Mapping) else "text/html"
    if "html" in kind:
        return html_to_text(value, limit)
    return truncate(collapse(strip_invisible(value[: limit * 8])), limit)


def _summary(entry: Mapping[str, Any]) -> str:
    """The summary, else the first content block, as plain text."""
    if _str(entry.get("summary")):
        return _text_field(entry, "summary", SUMMARY_LIMIT)
    for block in entry.get("content") or []:
        if isinstance(block, Mapping) and _str(block.get("value")):
            return _text_field({"v": block["value"], "v_detail": block}, "v", SUMMARY_LIMIT)
    return ""


def _authors(entry: Mapping[str, Any]) -> tuple[str, ...]:
    names = [a.get("name") for a in entry.get("authors") or [] if isinstance(a, Mapping)]
    if not names and entry.get("author"):
        names = [entry.get("author")]
    cleaned = (clean_line(n, AUTHOR_LIMIT) for n in names[:MAX_AUTHORS] if isinstance(n, str))
    return tuple(dict.fromkeys(n for n in cleaned if n))


def safe_link(raw: str, base: str = "") -> str:
    """An absolute http(s) link, or "" for javascript:, data:, file: and anything unparsable."""
    raw = collapse(strip_invisible(raw))
    if not raw or len(raw) > LINK_LIMIT:
        return ""
    try:
        absolute = urljoin(base, raw) if base else raw
        parts = urlsplit(absolute)
    except ValueError:
        return ""
    if parts.scheme.lower() not in _WEB_SCHEMES or not parts.hostname:
        return ""
    return absolute


def canonical_link(link: str) -> str:
    """The link as an id: scheme and host lowercased, fragment and tracking parameters dropped."""
    parts = urlsplit(link)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.lower().startswith(_TRACKING)]
    netloc = parts.netloc.lower()
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", urlencode(query), ""))


def entry_id(guid: str, link: str, title: str, summary: str) -> str:
    """Stable id: the guid if sane, else the canonical link, else a hash of title and summary."""
    guid = collapse(strip_invisible(guid[: GUID_LIMIT + 1]))
    if guid and len(guid) <= GUID_LIMIT:
        return guid
    if link:
        return canonical_link(link)
    return hashlib.sha256(f"{title}\n{summary}".encode()).hexdigest()


def published_at(entry: Mapping[str, Any], now: datetime) -> datetime | None:
    """Publication time in UTC from published, else updated; implausible dates become None."""
    for key in ("published_parsed", "updated_parsed"):
        # dict.get: FeedParserDict.get maps a missing published to updated with a warning.
        parsed = dict.get(entry, key) if isinstance(entry, dict) else entry.get(key)
        if parsed is None:
            continue
        try:
            year, month, day, hour, minute, second = parsed[:6]
            when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except (TypeError, ValueError, OverflowError):
            continue
        if OLDEST <= when <= now + FUTURE_SLACK:
            return when
        return None
    return None
