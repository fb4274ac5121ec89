"""Untrusted feed text made safe to show: HTML to plain text, invisible characters removed."""

from __future__ import annotations

import html
import re
import unicodedata

import nh3

# Raw input is cut before cleaning so a multi-megabyte field costs linear, bounded work;
# the factor leaves room for markup and entities that the cleaning removes.
_RAW_FACTOR = 64
_RAW_FLOOR = 100_000

# Tags whose content is never text a reader should see (nh3 drops tag and content).
_CONTENT_TAGS = {"script", "style", "iframe", "noscript", "template", "object", "embed",
                 "svg", "math", "textarea", "select", "head", "title"}

# A space before block-level tags so "<p>a</p><p>b</p>" becomes "a b", not "ab".
_BLOCK_TAG = re.compile(
    r"<(?=/?(?:p|div|br|hr|li|ul|ol|dl|dt|dd|h[1-6]|tr|td|th|table|blockquote|section|"
    r"article|header|footer|figure|figcaption|pre|address)\b)",
    re.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s+")
_NEWLINES = re.compile(r"\r\n?")


def _is_invisible(ch: str) -> bool:
    # Cc: C0/C1 controls; Cf: format characters (bidi overrides and isolates U+202A-202E,
    # U+2066-2069, zero-width space/joiners, BOM, soft hyphen); Cs/Co/Cn: never text.
    return unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}


def strip_invisible(text: str) -> str:
    """Remove control, bidi-override, zero-width and unassigned characters; keep tab and newline."""
    text = _NEWLINES.sub("\n", text)
    if text.isascii():
        if text.isprintable():
            return text
        return "".join(ch for ch in text if ch in "\t\n" or " " <= ch < "\x7f")
    return "".join(ch for ch in text if ch in "\t\n" or not _is_invisible(ch))


def collapse(text: str) -> str:
    """Each run of whitespace (newlines, tabs, NBSP, line separators) as one space, trimmed."""
    return _WHITESPACE.sub(" ", text).strip()


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary near the end when there is one."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ", max(0, limit - 80))
    if space > 0:
        cut = cut[:space]
    return cut.rstrip() + "…"


def html_to_text(markup: str, limit: int) -> str:
    """Plain text of an HTML fragment: tags, scripts, styles, iframes removed, entities decoded."""
    markup = markup[: max(_RAW_FLOOR, limit * _RAW_FACTOR)]
    if "<" in markup:
        markup = _BLOCK_TAG.sub(" <", markup)
        markup = nh3.clean(markup, tags=set(), clean_content_tags=_CONTENT_TAGS, attributes={},
                           strip_comments=True)
    elif "&" not in markup:
        return truncate(collapse(strip_invisible(markup)), limit)
    # nh3 re-escapes the text it keeps; one unescape turns it into plain text.
    text = html.unescape(markup)
    return truncate(collapse(strip_invisible(text)), limit)


def clean_line(text: str, limit: int) -> str:
    """One-line plain text (a title, an author): markup stripped, whitespace collapsed, cut."""
    return html_to_text(text, limit)
