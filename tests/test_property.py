"""Property: random and mutated feeds through the real fetch, parse, language, match and classify
steps never let an exception escape except a clean per-feed error, and what comes out is
well-formed."""

from __future__ import annotations

import asyncio
import html
import math
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.analysis.classify import Classifier, Head, default_head_path
from monitor.analysis.encoder import Encoder
from monitor.analysis.language import detect_language
from monitor.analysis.match import Matcher
from monitor.config import Config, load_config
from monitor.errors import FeedError
from monitor.feeds.fetch import Fetcher
from monitor.feeds.parse import parse_feed
from monitor.models import Article
from monitor.settings import Settings
from tests.servers import LoopbackHTTPServer, Reply
from tests.test_config import shipped_copy

pytestmark = pytest.mark.model

# Control, zero-width and bidi-override characters, and markup (a tag, not a bare "<" that
# the text itself may contain, e.g. "a < b" decoded from "&lt;").
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]|<[a-zA-Z/!?]")
HOSTILE_BITS = [
    '<!DOCTYPE rss [<!ENTITY x "xxxxxxxxxx">]>', "&x;", "&amp;", "&#0;", "&#xD800;", "<![CDATA[",
    "]]>", "<script>alert(1)</script>", "<item>", "</item>", "<title>", "</channel>", "\x00",
    "\u202e", "\ufeff", "<a href='javascript:alert(1)'>", "<guid></guid>", "<!--", "\r\n",
    '<?xml version="1.0" encoding="utf-16"?>', "<div>" * 50, "هجوم على الحدود", "<link>file:///",
]
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
arabic = st.text(alphabet=st.characters(min_codepoint=0x0621, max_codepoint=0x064A), max_size=30)
entry = st.fixed_dictionaries({
    "guid": st.one_of(st.none(), words), "title": st.one_of(words, arabic),
    "summary": st.one_of(words, arabic), "link": st.sampled_from([
        None, "https://news.example.org/a?id=1", "javascript:alert(1)", "/relative/path",
        "data:text/html,x", "http://[::1", ""]),
    "date": st.sampled_from([None, "Tue, 24 Nov 2026 10:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT",
                             "9999-12-31T23:59:59Z", "yesterday"]),
})


def render(items: list[dict[str, str | None]], encoding: str, declare: bool) -> bytes:
    """An RSS document of ``items``, escaped properly, in ``encoding``."""
    parts = []
    for it in items:
        fields = [f"<title>{html.escape(it['title'] or '')}</title>",
                  f"<description>{html.escape(it['summary'] or '')}</description>"]
        for tag, key in (("guid", "guid"), ("link", "link"), ("pubDate", "date")):
            if it[key] is not None:
                fields.append(f"<{tag}>{html.escape(it[key] or '')}</{tag}>")
        parts.append("<item>" + "".join(fields) + "</item>")
    decl = f'<?xml version="1.0" encoding="{encoding}"?>' if declare else ""
    doc = f'{decl}<rss version="2.0"><channel><title>p</title>{"".join(parts)}</channel></rss>'
    return doc.encode(encoding, errors="replace")


@st.composite
def feed_bytes(draw: st.DrawFn) -> bytes:
    """A valid feed, then possibly mutated: cut, byte flips, hostile fragments spliced in."""
    items = draw(st.lists(entry, max_size=6))
    encoding = draw(st.sampled_from(["utf-8", "cp1256", "utf-16", "iso-8859-6"]))
    body = bytearray(render(items, encoding, draw(st.booleans())))
    for _ in range(draw(st.integers(0, 4))):
        if not body:
            break
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["cut", "flip", "splice", "delete"]))
        if action == "cut":
            del body[at:]
        elif action == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif action == "splice":
            body[at:at] = draw(st.sampled_from(HOSTILE_BITS)).encode()
        else:
            del body[at:at + draw(st.integers(1, 20))]
    return bytes(body)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(shipped_copy(tmp_path_factory.mktemp("prop")), env={})


@pytest.fixture(scope="module")
def classifier(config: Config, encoder_int8: Encoder) -> Classifier:
    """Built once: it embeds every signal's examples."""
    return Classifier(encoder_int8, config.signals, Head.load(default_head_path()))


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackHTTPServer]:
    http = LoopbackHTTPServer()
    http.start()
    yield http
    http.stop()


def fetch_and_parse(server: LoopbackHTTPServer, body: bytes, ctype: str) -> list[Article]:
    """GET the body from the loopback server with the real Fetcher, then parse_feed it."""
    server.routes["/p.xml"] = Reply(200, body, {"Content-Type": ctype})

    async def go() -> list[Article]:
        async with Fetcher(Settings(allow_private_networks=True, fetch_timeout=10)) as fetcher:
            result = await fetcher.fetch("prop", server.url("/p.xml"))
        return parse_feed(result.content, feed_name="prop", feed_url=server.url("/p.xml"),
                          content_type=result.content_type)

    return asyncio.run(go())


def assert_well_formed(article: Article) -> None:
    assert article.id and len(article.id) <= 2048 and article.feed == "prop"
    assert len(article.title) <= 1000 and len(article.summary) <= 5000
    assert not UNSAFE.search(article.title) and not UNSAFE.search(article.summary)
    assert article.link == "" or article.link.startswith(("http://", "https://"))
    assert article.published is None or 1990 <= article.published.year <= 2100


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=feed_bytes(), ctype=st.sampled_from([
    "application/rss+xml", "text/xml; charset=utf-8", "text/xml; charset=windows-1252",
    "text/html", "application/octet-stream"]))
def test_random_and_mutated_feeds_never_crash_the_pipeline(
    server: LoopbackHTTPServer, config: Config, classifier: Classifier, body: bytes, ctype: str,
) -> None:
    """Fetch, parse, language detection, watch-list matching and classification either give
    well-formed results or one clean FeedError for the feed."""
    try:
        articles = fetch_and_parse(server, body, ctype)
    except FeedError as exc:
        assert exc.feed == "prop" and exc.reason
        return
    langs = [detect_language(a.text, hint=None) for a in articles]
    assert set(langs) <= {"en", "ar", "other"}
    for article in articles:
        assert_well_formed(article)
    scored = classifier.score([a.text for a in articles], langs)
    matcher = Matcher(config)
    names = {w.name for w in config.watchlists}
    for article, s in zip(articles, scored, strict=True):
        assert 0.0 <= s.score <= 1.0 and math.isfinite(s.score)
        assert all(0.0 <= x.score <= 1.0 for x in s.signals)
        hits = matcher.evaluate(article.text, s.score, s.signals, classifier.threshold)
        assert {h.watchlist for h in hits} <= names
