"""Tests for monitor.feeds.parse: fixtures, charsets, hostile input, bounds and clear errors."""

from __future__ import annotations

import codecs
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.errors import ParseError
from monitor.feeds.charset import decode_feed
from monitor.feeds.parse import canonical_link, neutralise_dtd, parse_feed

DATA = Path(__file__).resolve().parent.parent / "data" / "feeds"
URL = "https://feeds.example.org/world.xml"
ARABIC_TITLES = [
    "وزير الخارجية يبحث مع نظيره سبل تهدئة التوتر على الحدود",
    "ارتفاع أسعار الوقود في الأسواق المحلية بنسبة 12 في المئة",
    "مُظاهَرات سِلْمِيَّة في العاصمة للمطالبة بتحسين الخدمات",
]


def parse(content: bytes, **kwargs: object) -> list:  # type: ignore[type-arg]
    return parse_feed(content, feed_name="test-feed", feed_url=URL, **kwargs)  # type: ignore[arg-type]


def rss(items: str, head: str = '<?xml version="1.0" encoding="utf-8"?>') -> bytes:
    return f'{head}<rss version="2.0"><channel><title>T</title>{items}</channel></rss>'.encode()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_english_rss_fields() -> None:
    """The English fixture yields clean titles, plain-text summaries, UTC dates, authors and ids."""
    first, second, third = parse((DATA / "english_rss.xml").read_bytes(), lang_hint="en")
    assert first.id == "harbor-line-10421"
    assert first.title == "Border crossing reopens after three-day closure"
    assert first.summary == ("Officials said trucks carrying medical supplies were the first "
                             "to pass. Queues stretched for two kilometres.")
    assert first.published == datetime(2024, 5, 14, 5, 30, tzinfo=UTC)
    assert first.authors == ("Dana Whitfield",)
    assert first.lang_hint == "en" and first.feed == "test-feed" and first.feed_url == URL
    assert second.id == "https://news.example.org/2024/05/water-talks"
    assert "trackVisitor" not in second.summary and "script" not in second.summary
    assert third.title == "Power cuts hit coastal towns & ports"
    assert len(third.id) == 64 and third.link == ""


def test_atom_fields() -> None:
    """Atom: html titles stripped, xhtml content as text, relative links resolved, js dropped."""
    first, second = parse((DATA / "atom.xml").read_bytes())
    assert first.title == "Ceasefire holds for a second night"
    assert first.summary == "Residents reported a quiet night. Aid convoys are expected at dawn."
    assert first.link == "https://feeds.example.org/stories/881"
    assert first.authors == ("Samir Haddad", "Lena Ortiz")
    assert first.published == datetime(2024, 5, 14, 4, 45, tzinfo=UTC)
    assert second.link == "" and second.id == "tag:crescent.example.net,2024:entry-880"


@pytest.mark.parametrize("name", ["arabic_utf8.xml", "arabic_cp1256.xml", "arabic_iso8859_6.xml"])
@pytest.mark.parametrize("content_type", [
    None, "application/rss+xml", "text/xml; charset=windows-1252",
    "text/xml; charset=ISO-8859-1", "text/xml; charset=utf-8",
])
def test_arabic_charsets(name: str, content_type: str | None) -> None:
    """Arabic decodes right in UTF-8, windows-1256 and ISO-8859-6, whatever the header says."""
    articles = parse((DATA / name).read_bytes(), content_type=content_type)
    assert [a.title for a in articles] == ARABIC_TITLES
    assert articles[0].summary.startswith("أكد الوزير أن الحوار")


@pytest.mark.parametrize("charset", ["windows-1256", "iso-8859-6"])
def test_declared_legacy_charset_honoured(charset: str) -> None:
    """A correct charset in the header or the XML declaration is used."""
    text = rss("<item><title>انفجار في الميناء</title></item>",
               head=f'<?xml version="1.0" encoding="{charset}"?>').decode()
    raw = text.encode(charset)
    assert parse(raw)[0].title == "انفجار في الميناء"
    assert parse(raw, content_type=f"text/xml; charset={charset}")[0].title == "انفجار في الميناء"


def test_bom_beats_declaration() -> None:
    """A UTF-8 BOM wins over an XML declaration that says windows-1256."""
    body = rss("<item><title>غارة جوية</title></item>",
               head='<?xml version="1.0" encoding="windows-1256"?>')
    assert parse(codecs.BOM_UTF8 + body, content_type="text/xml; charset=windows-1256")[0].title \
        == "غارة جوية"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16(codec: str) -> None:
    """UTF-16 with a BOM, and without one (sniffed from the '<' byte pattern), decodes."""
    text = rss("<item><title>هدنة Truce</title></item>",
               head='<?xml version="1.0" encoding="utf-16"?>').decode()
    assert parse(text.encode(codec))[0].title == "هدنة Truce"


def test_mostly_utf8_with_a_bad_byte() -> None:
    """UTF-8 with one stray invalid byte stays UTF-8 instead of becoming mojibake."""
    body = rss("<item><title>وزير الخارجية يصل إلى بغداد</title><description>"
               + "نص عربي طويل " * 40 + "</description></item>")
    assert decode_feed(body.replace(b"</title>", b"\xff</title>")).encoding == "utf-8"
    assert parse(body.replace(b"</title>", b"\xff</title>"))[0].title.startswith("وزير الخارجية")


def test_controls_bidi_and_markup_cleaned() -> None:
    """Titles lose C0 controls, NULs, bidi overrides, zero-width chars and markup; text stays."""
    title = ("Rockets\x00 fired\x07 \u202egnirts\u202c\u2066x\u2069 at\u200b\ttown\r\n"
             "&lt;b&gt;now&lt;/b&gt;")
    article = parse(rss(f"<item><title>{title}</title><link>http://a.example/1</link></item>"))[0]
    assert article.title == "Rockets fired gnirtsx at town now"
    assert not any(ch in article.title for ch in "\x00\x07\u202e\u2066\u200b\t\n<>")


@pytest.mark.parametrize("link", [
    "javascript:alert(1)", "data:text/html,<b>x</b>", "file:///etc/passwd",
    "ftp://files.example/x", "vbscript:msgbox(1)",
])
def test_unsafe_links_dropped(link: str) -> None:
    """Only http and https links are kept; anything else becomes ""."""
    article = parse(rss(f"<item><title>x</title><link>{link}</link></item>"))[0]
    assert article.link == ""


def test_canonical_link_ids() -> None:
    """Link ids lowercase scheme and host and drop the fragment and tracking parameters."""
    assert canonical_link("HTTPS://News.Example.ORG/a/B?id=3&utm_source=x&fbclid=y#top") \
        == "https://news.example.org/a/B?id=3"
    one = parse(rss("<item><title>a</title><link>https://ex.com/s?utm_medium=rss</link></item>"))
    two = parse(rss("<item><title>a</title><link>HTTPS://EX.com/s#c</link></item>"))
    assert one[0].id == two[0].id == "https://ex.com/s"


def test_absurd_guid_falls_back_to_link() -> None:
    """A guid longer than the cap is ignored in favour of the link."""
    article = parse(rss(f"<item><guid>{'g' * 5000}</guid><title>x</title>"
                        "<link>https://ex.com/1</link></item>"))[0]
    assert article.id == "https://ex.com/1"


@pytest.mark.parametrize(("date", "expected"), [
    ("Sun, 01 Jan 1989 10:00:00 GMT", None),
    ("Fri, 01 Jan 2100 10:00:00 GMT", None),
    ("Wed, 01 May 2024 10:00:00 +0200", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
    ("not a date", None),
])
def test_published_bounds(date: str, expected: datetime | None) -> None:
    """Dates become UTC; before 1990, far in the future or unparsable become None."""
    article = parse(rss(f"<item><title>x</title><pubDate>{date}</pubDate></item>"))[0]
    assert article.published == expected


def test_billion_laughs_not_expanded() -> None:
    """A billion-laughs DTD is removed: parsing is fast, memory flat, nothing expanded."""
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    doc = (f'<?xml version="1.0"?><!DOCTYPE rss [{"".join(levels)}]>'
           '<rss version="2.0"><channel><item><title>&lol9;</title>'
           "<link>https://ex.com/1</link></item></channel></rss>").encode()
    before, start = peak_rss_mb(), time.monotonic()
    articles = parse(doc)
    assert time.monotonic() - start < 2 and peak_rss_mb() - before < 50
    assert len(articles[0].title) < 100


def test_big_entity_on_own_lines_not_expanded() -> None:
    """A 100 kB entity referenced 5,000 times on own lines (loose parser path) stays unexpanded."""
    refs = "\n&big;\n" * 5000
    doc = (f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY big "{"A" * 100_000}">\n]>\n'
           f'<rss version="2.0"><channel><item><title>t</title><description>{refs}'
           "</description><link>https://ex.com/1</link></item></channel></rss>").encode()
    before, start = peak_rss_mb(), time.monotonic()
    articles = parse(doc)
    assert time.monotonic() - start < 3 and peak_rss_mb() - before < 100
    assert "AAAA" not in articles[0].summary and len(articles[0].summary) <= 5000


def test_external_entities_never_read(tmp_path: Path) -> None:
    """External entities and DTDs pointing at a local file are never read into an Article."""
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7f3a9c")
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY % f SYSTEM "file://{secret}"><!ENTITY leak "%f;">')
    for doctype in (f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>',
                    f'<!DOCTYPE rss SYSTEM "file://{dtd}">',
                    f'<!DOCTYPE rss [<!ENTITY % ext SYSTEM "file://{dtd}"> %ext;]>'):
        doc = (f'<?xml version="1.0"?>{doctype}<rss version="2.0"><channel><item>'
               "<title>&xxe; &leak;</title><description>&xxe;</description>"
               "<link>https://ex.com/1</link></item></channel></rss>").encode()
        for article in parse(doc):
            assert "MARKER" not in article.model_dump_json()


def test_deeply_nested_markup() -> None:
    """10,000 nested <div>s, escaped in RSS or real XHTML in Atom, neither crash nor explode."""
    nested = "<div>" * 10_000 + "deep text" + "</div>" * 10_000
    escaped = nested.replace("<", "&lt;").replace(">", "&gt;")
    start = time.monotonic()
    rss_article = parse(rss(f"<item><title>x</title><description>{escaped}</description></item>"))
    atom = ('<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>urn:1</id><title>x</title>'
            f'<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">{nested}</div>'
            "</content></entry></feed>").encode()
    atom_article = parse(atom)
    assert time.monotonic() - start < 20
    assert "deep text" in rss_article[0].summary and "deep text" in atom_article[0].summary


def test_many_items_capped() -> None:
    """50,000 items stop at max_items, keeping the first ones, in bounded time."""
    items = "".join(f"<item><title>s{i}</title><guid>g{i}</guid></item>" for i in range(50_000))
    start = time.monotonic()
    articles = parse(rss(items), max_items=1000)
    assert time.monotonic() - start < 5
    assert len(articles) == 1000 and articles[0].id == "g0" and articles[-1].id == "g999"


def test_two_megabyte_title_truncated() -> None:
    """A 2 MB title is cut to 1,000 characters quickly; a huge summary to 5,000."""
    huge = "word &amp; " * 200_000
    start = time.monotonic()
    article = parse(rss(f"<item><title>{huge}</title><description>{huge}</description></item>"))[0]
    assert time.monotonic() - start < 5
    assert 900 < len(article.title) <= 1000 and 4000 < len(article.summary) <= 5000


@pytest.mark.parametrize(("content", "expected"), [
    ((DATA / "challenge.html").read_bytes(), "got an HTML page"),
    (b"", "empty response body"),
    (b"   \n ", "empty response body"),
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "not an RSS/Atom feed"),
    (b'{"items": []}', "not an RSS/Atom feed"),
    (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Cut', "truncated or malformed"),
])
def test_not_a_feed(content: bytes, expected: str) -> None:
    """HTML pages, empty bodies, garbage and truncated XML raise ParseError naming the feed."""
    with pytest.raises(ParseError) as info:
        parse(content, content_type="text/html" if b"html" in content else None)
    assert expected in str(info.value) and "feed test-feed:" in str(info.value)


def test_empty_valid_feed() -> None:
    """A well-formed feed with no items is not an error: it returns []."""
    assert parse(rss("")) == []


def test_broken_feed_with_entries_accepted() -> None:
    """A slightly broken feed (bare &, unclosed tags) still yields the entries it has."""
    articles = parse((DATA / "malformed.xml").read_bytes())
    assert articles[0].title == "Markets steady as fuel prices fall & shops reopen"
    assert articles[0].link == "https://sloppy.example.com/a/1"


def test_neutralise_dtd_removes_declarations() -> None:
    """DOCTYPE internal subsets (with quoted '>' and ']') and stray ENTITY declarations vanish."""
    doc = ('<?xml version="1.0"?>\n<!DOCTYPE rss PUBLIC "-//x//y" "http://evil.example/d.dtd" [\n'
           '<!ENTITY a "x]>y"> <!ENTITY % p SYSTEM \'file:///etc/passwd\'> %p;\n]>\n'
           '<rss><!ENTITY b "late"><channel/></rss>')
    assert neutralise_dtd(doc) == '<?xml version="1.0"?>\n\n<rss><channel/></rss>'
