"""Tests for monitor.opml: importing OPML subscriptions into feeds.yaml safely."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.opml import import_opml, parse_opml
from tests.test_config import BASE, write_tree

OPML = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>Desk subscriptions</title></head>
  <body>
    <outline text="Arabic">
      <outline text="BBC Arabic" type="rss" xmlUrl="https://feeds.bbci.co.uk/arabic/rss.xml"
               language="ar"/>
      <outline title="الجزيرة" text="Al Jazeera" type="rss"
               xmlUrl="https://www.aljazeera.net/rss.xml"/>
    </outline>
    <outline text="Wires">
      <outline text="Regional">
        <outline text="Example" type="rss" xmlUrl="https://example.org/feed.xml"/>
        <outline text="Example" type="rss" xmlUrl="https://example.org/other.xml"/>
        <outline text="Local file" type="rss" xmlUrl="file:///etc/passwd"/>
      </outline>
    </outline>
    <outline text="No title" type="rss" xmlUrl="https://news.test/rss"/>
  </body>
</opml>
"""


def test_parse_opml_reads_feeds_and_folder_tags() -> None:
    """Outlines with xmlUrl become feeds; enclosing folders become tags; language is a hint."""
    feeds = parse_opml(OPML.encode())
    assert [(f.title, f.tags, f.lang) for f in feeds[:3]] == [
        ("BBC Arabic", ["Arabic"], "ar"),
        ("الجزيرة", ["Arabic"], None),
        ("Example", ["Wires", "Regional"], None),
    ]
    assert feeds[-1].tags == []


def test_import_appends_without_duplicates_and_keeps_comments(tmp_path: Path) -> None:
    """New feeds are appended as text (comments survive); known URLs are skipped; names unique."""
    root = write_tree(tmp_path, {**BASE, "feeds.yaml": "# my comment\n" + BASE["feeds.yaml"]})
    opml = tmp_path / "subs.opml"
    opml.write_text(OPML, encoding="utf-8")
    added = import_opml(opml, root / "feeds.yaml")
    assert added == ["BBC Arabic", "الجزيرة", "Example (2)", "No title"]
    text = (root / "feeds.yaml").read_text(encoding="utf-8")
    assert text.startswith("# my comment\n")
    config = load_config(root, env={})
    assert [f.url for f in config.feeds][-1] == "https://news.test/rss"
    assert config.feeds[1].lang == "ar" and config.feeds[1].tags == ["Arabic"]
    assert import_opml(opml, root / "feeds.yaml") == []  # idempotent


def test_import_into_flow_style_file_rewrites_it(tmp_path: Path) -> None:
    """When appending text is impossible (flow-style list) the file is rewritten, still valid."""
    feeds = tmp_path / "feeds.yaml"
    feeds.write_text("feeds: [{url: 'https://example.org/feed.xml', name: Example}]\n")
    opml = tmp_path / "subs.opml"
    opml.write_text(OPML, encoding="utf-8")
    assert len(import_opml(opml, feeds)) == 4
    write_tree(tmp_path, {k: v for k, v in BASE.items() if k != "feeds.yaml"})
    assert len(load_config(tmp_path, env={}).feeds) == 5


@pytest.mark.parametrize(
    "doc",
    [
        '<?xml version="1.0"?><!DOCTYPE o [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        '<opml><body><outline text="&b;" xmlUrl="https://x.test/f"/></body></opml>',
        '<?xml version="1.0"?><!DOCTYPE o [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<opml><body><outline text="&x;" xmlUrl="https://x.test/f"/></body></opml>',
        "<opml><body><outline text='broken' xmlUrl='https://x.test/f'></body>",
    ],
)
def test_unsafe_or_broken_opml_is_refused(doc: str) -> None:
    """Entity declarations (billion laughs, XXE) and malformed XML raise ConfigError quickly."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_opml(doc.encode(), "subs.opml")
    assert time.monotonic() - started < 1
    assert str(info.value).startswith("subs.opml: cannot read the OPML")
