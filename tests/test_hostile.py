"""Hostile input end to end: each case against a loopback server, next to a good feed that
must still be admitted; SSRF proven by a trap listener and a connect spy; memory as an RSS bound."""

from __future__ import annotations

import asyncio
import codecs
import gzip
import html
import ipaddress
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from monitor.channels.email import EmailChannel
from monitor.channels.slack import SlackChannel
from monitor.clock import SystemClock
from monitor.config import FeedConfig
from monitor.errors import BlockedURLError, FeedError, RetryableDeliveryError, TooLargeError
from monitor.feeds import guard, worker
from monitor.feeds.fetch import Fetcher
from monitor.feeds.worker import ParserPool
from monitor.models import Article, SignalScore
from monitor.poll import Poller
from monitor.render import Renderer, sample_alert
from monitor.settings import Settings
from monitor.state.sqlite import SQLiteStore
from monitor.stories import Firing, StoryBook
from tests.channels.conftest import EmailCfg, SlackCfg
from tests.servers import LoopbackHTTPServer, Reply, Trap
from tests.stack import ROOT

ARABIC = "هجوم بطائرات مسيرة على قاعدة عين الأسد الجوية غرب العراق"
GOOD = (b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>ok</title>'
        b"<item><guid>good-1</guid><title>Ceasefire talks resume in Cairo</title>"
        b"<link>https://news.example.org/good-1</link></item></channel></rss>")
WORKER_RSS_BOUND_MB = 300  # the daemon's parser worker runs under RLIMIT_AS 512 MB
LOOP_GAP_BOUND = 0.25  # seconds the event loop may stall while a worker parses


def rss(items: str, head: str = '<?xml version="1.0" encoding="utf-8"?>', chan: str = "") -> str:
    """An RSS 2.0 document around ``items`` (text; encode it as the case needs)."""
    return f'{head}<rss version="2.0"><channel><title>T</title>{chan}{items}</channel></rss>'


def item(guid: str, title: str, extra: str = "") -> str:
    return (f"<item><guid>{guid}</guid><title>{title}</title>"
            f"<link>https://news.example.org/{guid}</link>{extra}</item>")


def billion_laughs() -> bytes:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return (f'<?xml version="1.0"?><!DOCTYPE rss [{"".join(levels)}]>'
            + rss(item("bl", "&lol9;"), head="")).encode()


def big_entity() -> bytes:
    refs = "\n&big;\n" * 5000
    return (f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY big "{"A" * 100_000}">\n]>\n'
            + rss(item("be", "t", f"<description>{refs}</description>"), head="")).encode()


def many_items(n: int = 50_000) -> bytes:
    return rss("".join(f"<item><title>s{i}</title><guid>g{i}</guid></item>"
                       for i in range(n))).encode()


def gzip_bomb(megabytes: int, layers: int = 1) -> bytes:
    """Zeros that inflate to ``megabytes`` MB, compressed in chunks to keep this process small."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    body = b"".join(packer.compress(chunk) for _ in range(megabytes)) + packer.flush()
    for _ in range(layers - 1):
        body = gzip.compress(body)
    return body


def cp1256_feed() -> bytes:
    return rss(item("ar-1", ARABIC), head='<?xml version="1.0"?>').encode("cp1256")


HOSTILE: dict[str, tuple[Reply, str]] = {
    # name: (reply, "ok" or a fragment of the per-feed error)
    "billion-laughs": (Reply(200, billion_laughs()), "ok"),
    "big-entity-own-lines": (Reply(200, big_entity()), "ok"),
    "gzip-bomb": (Reply(200, gzip_bomb(64), {"Content-Encoding": "gzip"}),
                  "decompressed body exceeds"),
    "stacked-gzip-bomb": (Reply(200, gzip_bomb(64, 2), {"Content-Encoding": "gzip, gzip"}),
                          "decompressed body exceeds"),
    "content-length-shorter-than-body": (
        Reply(200, GOOD.replace(b"good-1", b"lie-1"), {"Content-Length": "120"}), "truncated"),
    "empty-200": (Reply(200, b""), "empty response body"),
    "html-challenge-200": (Reply(200, b"<!DOCTYPE html><html><body>Checking your browser"
                                 b"</body></html>", {"Content-Type": "text/html"}), "HTML page"),
    "2mb-title": (Reply(200, rss(item("t2", "word &amp; " * 200_000)).encode()), "ok"),
    "deeply-nested": (Reply(200, rss(item("dn", "x", "<description>" + html.escape(
        "<div>" * 3000 + "deep text" + "</div>" * 3000) + "</description>")).encode()), "ok"),
    "cp1256-no-charset": (Reply(200, cp1256_feed(), {"Content-Type": "application/xml"}), "ok"),
    "header-says-utf8-body-cp1256": (
        Reply(200, cp1256_feed(), {"Content-Type": "text/xml; charset=utf-8"}), "ok"),
    "header-says-1252-body-cp1256": (
        Reply(200, cp1256_feed(), {"Content-Type": "text/xml; charset=windows-1252"}), "ok"),
    "header-says-latin1-body-utf8": (
        Reply(200, rss(item("ar-1", ARABIC)).encode(),
              {"Content-Type": "application/rss+xml; charset=ISO-8859-1"}), "ok"),
    "bom-contradicts-declaration": (
        Reply(200, codecs.BOM_UTF8 + rss(item("ar-1", ARABIC),
                                         head='<?xml version="1.0" encoding="windows-1256"?>'
                                         ).encode()), "ok"),
    "utf16": (Reply(200, rss(item("ar-1", ARABIC), head='<?xml version="1.0" encoding="utf-16"?>'
                              ).encode("utf-16")), "ok"),
    "nul-and-controls": (Reply(200, rss(item("c1", "Rockets\x00 fired\x07\x1b[31m at\u202e town"
                                             "\u200b")).encode()), "ok"),
}


@pytest.fixture(scope="module")
def pool() -> Iterator[ParserPool]:
    """One parser worker for the module, started before the first test uses it."""
    with ParserPool(workers=1, memory_limit_mb=512, timeout=20.0) as parser_pool:
        asyncio.run(parser_pool.warm_up())
        yield parser_pool


@asynccontextmanager
async def poller(tmp_path: Path, pool: ParserPool, **overrides: Any) -> AsyncIterator[Poller]:
    """A real Poller: Fetcher (loopback allowed), the worker pool, a SQLite store."""
    store = SQLiteStore(tmp_path / "state.sqlite3")
    await store.open()
    settings = Settings(allow_private_networks=True, fetch_timeout=5, **overrides)
    try:
        async with Fetcher(settings) as fetcher:
            yield Poller(store, fetcher, pool, SystemClock(), "hostile-test")
    finally:
        await store.close()


def feed(url: str, name: str) -> FeedConfig:
    return FeedConfig(url=url, name=name, interval=30)


async def queued(p: Poller) -> list[Article]:
    return [a for _, a in await p._store.claim_articles("c", 10_000)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_feed_fails_alone_good_feed_admitted(
    case: str, tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """Each hostile body ends in bounded time with a clean result or a clear per-feed error,
    while a good feed polled alongside is admitted."""
    reply, expected = HOSTILE[case]
    http_server.routes["/evil.xml"] = reply
    http_server.routes["/good.xml"] = Reply(200, GOOD)
    async with poller(tmp_path, pool) as p:
        started = time.monotonic()
        evil, good = await asyncio.gather(p.poll(feed(http_server.url("/evil.xml"), "evil")),
                                          p.poll(feed(http_server.url("/good.xml"), "good")))
        elapsed = time.monotonic() - started
        articles = await queued(p)
    assert good.status == "ok" and good.admitted == 1
    assert elapsed < 15
    evil_articles = [a for a in articles if a.feed == "evil"]
    if expected == "ok":
        assert evil.status == "ok", evil.error
        assert_clean(case, evil_articles)
    else:
        assert evil.status == "error" and expected in evil.error and not evil_articles
    assert [a.id for a in articles if a.feed == "good"] == ["good-1"]


def assert_clean(case: str, articles: list[Article]) -> None:
    """What a parsed hostile feed may contain: bounded, plain, readable text."""
    assert articles
    for a in articles:
        assert len(a.title) <= 1000 and len(a.summary) <= 5000
        assert "AAAA" not in a.summary and "lollol" not in a.title
        assert not any(ch in a.title + a.summary for ch in "\x00\x07\x1b\u202e\u200b<>")
    if case.startswith(("cp1256", "header-says", "bom-", "utf16")):
        assert [a.title for a in articles] == [ARABIC]
        assert articles[0].lang == "ar"
    if case == "nul-and-controls":
        assert articles[0].title == "Rockets fired[31m at town"


async def test_unresolvable_feed_host_fails_alone(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """A feed whose host does not resolve fails with an error naming DNS; the other is admitted."""
    http_server.routes["/good.xml"] = Reply(200, GOOD)
    async with poller(tmp_path, pool) as p:
        bad, good = await asyncio.gather(
            p.poll(feed("http://feeds.nonexistent.invalid/rss.xml", "nx")),
            p.poll(feed(http_server.url("/good.xml"), "good")))
        state = await p._store.load_feed_state("http://feeds.nonexistent.invalid/rss.xml")  # type: ignore[attr-defined]
    assert bad.status == "error" and "DNS lookup" in bad.error
    assert good.admitted == 1
    assert state is not None and state.failures == 1 and state.next_poll is not None


async def test_ttl_of_years_is_ignored(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """An RSS <ttl> of 100 years does not stretch the poll interval: next poll = interval."""
    body = rss(item("t1", "x"), chan="<ttl>52560000</ttl><sy:updatePeriod>yearly"
               "</sy:updatePeriod>").encode()
    http_server.routes["/ttl.xml"] = Reply(200, body)
    async with poller(tmp_path, pool) as p:
        outcome = await p.poll(feed(http_server.url("/ttl.xml"), "ttl"))
        state = await p._store.load_feed_state(http_server.url("/ttl.xml"))  # type: ignore[attr-defined]
    assert outcome.status == "ok"
    assert state is not None and state.next_poll is not None and state.last_polled is not None
    assert state.next_poll - state.last_polled == timedelta(seconds=30)


@pytest.mark.parametrize("date", ["Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
                                  "9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"])
async def test_dates_in_1970_and_9999_become_unknown(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer, date: str,
) -> None:
    """Publication dates at the epoch or in year 9999 are dropped (None), not trusted or fatal."""
    http_server.routes["/d.xml"] = Reply(200, rss(item("d1", "x", f"<pubDate>{date}</pubDate>"
                                                       )).encode())
    async with poller(tmp_path, pool) as p:
        outcome = await p.poll(feed(http_server.url("/d.xml"), "dates"))
        [article] = await queued(p)
    assert outcome.status == "ok" and article.published is None


async def test_active_content_in_summaries_becomes_plain_text(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """Scripts, event handlers, iframes, styles and javascript:/data:/file: links leave no trace."""
    markup = ('<p onclick="alert(1)">Hi <iframe src="https://evil.example/"></iframe>'
              "<script>steal()</script><img src=x onerror=alert(2)><style>p{}</style>"
              '<a href="javascript:alert(3)">there</a></p>')
    items = "".join(
        f"<item><guid>a{i}</guid><title>&lt;b&gt;bold&lt;/b&gt; t{i}</title><link>{link}</link>"
        f"<description>{wrap(markup)}</description></item>"
        for i, (link, wrap) in enumerate([("javascript:alert(1)", html.escape),
                                          ("data:text/html,x", lambda s: f"<![CDATA[{s}]]>"),
                                          ("file:///etc/passwd", html.escape)]))
    http_server.routes["/a.xml"] = Reply(200, rss(items).encode())
    async with poller(tmp_path, pool) as p:
        await p.poll(feed(http_server.url("/a.xml"), "active"))
        articles = await queued(p)
    assert [a.summary for a in articles] == ["Hi there"] * 3
    assert [a.title for a in articles] == ["bold t0", "bold t1", "bold t2"]
    assert [a.link for a in articles] == ["", "", ""]


async def test_duplicate_guids_are_admitted_once(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """Repeated guids and id-less, link-less entries are admitted once, and not again next poll."""
    items = (item("dup", "first") + item("dup", "second copy")
             + "<item><title>no id at all</title><description>body</description></item>" * 2)
    http_server.routes["/dup.xml"] = Reply(200, rss(items).encode())
    async with poller(tmp_path, pool) as p:
        first = await p.poll(feed(http_server.url("/dup.xml"), "dup"))
        second = await p.poll(feed(http_server.url("/dup.xml"), "dup"), force=True)
        articles = await queued(p)
    assert (first.fetched, first.admitted, second.admitted) == (4, 2, 0)
    assert articles[0].id == "dup" and len(articles[1].id) == 64


async def test_ever_changing_guids_do_not_realert(tmp_path: Path) -> None:
    """The same story under a new guid on every poll joins the existing alert and sends nothing."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    book = StoryBook(store, SystemClock())
    vec = list(np.ones(8, dtype=np.float32) / np.sqrt(8))
    sent = []
    try:
        for poll in range(5):
            art = Article(id=f"rotating-{poll}-{time.time_ns()}", feed="wire",
                          feed_url="https://x.example/rss", title="Drone strike on Ain al-Asad",
                          lang="en")
            firing = Firing(article=art, watchlist="middle-east", score=0.9,
                            signals=(SignalScore(name="drone-strike", score=0.8),),
                            regions=("iraq",), keywords=(), embedding=vec, weights={})
            sent.append(await book.consider(firing))
    finally:
        await store.close()
    assert sent[0] is not None and sent[1:] == [None] * 4


def _peak_parse(content: bytes, kwargs: dict[str, Any]) -> tuple[bool, int, int]:
    """In the worker: reset the RSS high-water mark, parse, return (ok, count, peak kB)."""
    Path("/proc/self/clear_refs").write_text("5")
    ok, payload = worker._parse_in_worker(content, 60.0, kwargs)
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return ok, len(payload), peak


@pytest.mark.parametrize("case", ["billion-laughs", "big-entity-own-lines", "50k-items",
                                  "2mb-title", "20mb-arabic"])
async def test_worker_peak_rss_stays_under_the_bound(pool: ParserPool, case: str) -> None:
    """Parsing each hostile body, and a 20 MB (the decoded cap) Arabic feed, peaks under 300 MB
    RSS in the worker."""
    if case == "20mb-arabic":
        one = item("x", ARABIC, f"<description>{ARABIC * 20}</description>")
        body = rss(one * (20_000_000 // len(one.encode()))).encode()
    else:
        body = many_items() if case == "50k-items" else HOSTILE[case][0].body
    executor = pool._executor  # the real worker, with the daemon's RLIMIT_AS initializer
    assert executor is not None
    loop = asyncio.get_running_loop()
    ok, count, peak_kb = await loop.run_in_executor(
        executor, _peak_parse, body, {"feed_name": case, "feed_url": "https://x.example/"})
    assert ok and count >= 1
    assert peak_kb / 1024 < WORKER_RSS_BOUND_MB, f"{case}: worker peaked at {peak_kb // 1024} MB"


@asynccontextmanager
async def loop_gaps() -> AsyncIterator[list[float]]:
    """Measure the event loop's gaps between 10 ms ticks while the body runs."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield gaps
    finally:
        done.set()
        await ticker


async def test_event_loop_stays_responsive_while_a_worker_parses(pool: ParserPool) -> None:
    """A 50,000-item feed parses in the worker while the loop keeps ticking (no long stall)."""
    async with loop_gaps() as gaps:
        started = time.monotonic()
        articles = await pool.parse(many_items(), feed_name="big",
                                    feed_url="https://x.example/")
        parse_time = time.monotonic() - started
    assert len(articles) == 5000
    assert parse_time > 0.2 and max(gaps) < LOOP_GAP_BOUND


async def test_polling_a_large_feed_does_not_stall_the_loop(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer,
) -> None:
    """Polling a 1,000-item feed (parse, language detection, admit) never stalls the loop."""
    http_server.routes["/big.xml"] = Reply(200, many_items(1000))
    async with poller(tmp_path, pool) as p, loop_gaps() as gaps:
        outcome = await p.poll(feed(http_server.url("/big.xml"), "big"))
    assert outcome.admitted == 1000
    assert max(gaps) < LOOP_GAP_BOUND, f"event loop stalled {max(gaps):.1f} s"


def reset_hwm() -> None:
    """Reset this process's RSS high-water mark (Linux clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def vm_hwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM"))) / 1024


async def test_gzip_bomb_memory_stays_bounded(http_server: LoopbackHTTPServer) -> None:
    """A 512 MB gzip bomb is refused at the default 20 MB decoded cap; this process's peak RSS
    grows by less than 64 MB."""
    http_server.routes["/bomb"] = Reply(200, gzip_bomb(512), {"Content-Encoding": "gzip"})
    async with Fetcher(Settings(allow_private_networks=True)) as fetcher:
        reset_hwm()
        before = vm_hwm_mb()
        with pytest.raises(TooLargeError, match="20971520 bytes"):
            await fetcher.fetch("bomb", http_server.url("/bomb"))
        grown = vm_hwm_mb() - before
    assert grown < 64, f"peak RSS grew {grown:.0f} MB"


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


async def test_external_dtd_and_entities_are_never_fetched(
    tmp_path: Path, pool: ParserPool, http_server: LoopbackHTTPServer, trap: Trap,
) -> None:
    """External DTDs and external or parameter entities over http are never fetched (trap: 0)."""
    base = f"http://127.0.0.1:{trap.port}"
    for n, doctype in enumerate([
        f'<!DOCTYPE rss SYSTEM "{base}/evil.dtd">',
        f'<!DOCTYPE rss PUBLIC "-//X//Y" "{base}/pub.dtd">',
        f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{base}/xxe">]>',
        f'<!DOCTYPE rss [<!ENTITY % p SYSTEM "{base}/p.dtd"> %p;]>',
    ]):
        body = f'<?xml version="1.0"?>{doctype}' + rss(
            item(f"x{n}", "a &xxe; b", "<description>&xxe;</description>"), head="")
        http_server.routes[f"/x{n}.xml"] = Reply(200, body.encode())
    async with poller(tmp_path, pool) as p:
        outcomes = [await p.poll(feed(http_server.url(f"/x{n}.xml"), f"x{n}")) for n in range(4)]
    await asyncio.sleep(0.2)
    assert [o.status for o in outcomes] == ["ok"] * 4
    assert trap.connections == 0


@pytest.mark.parametrize("url", [
    "http://evil.example@127.0.0.1:{port}/feed", "http://user:pw@127.0.0.1:{port}/feed",
    "http://127.0.0.1:{port}\\@evil.example/", "http:\\\\127.0.0.1:{port}\\feed",
    "http://127.0.0.1:{port}/feed\r\nX-Injected: 1",
])
async def test_userinfo_and_backslash_tricks_never_connect(trap: Trap, url: str) -> None:
    """Even with private networks allowed, user-info, backslash and CR/LF URLs are refused
    and the trap sees nothing."""
    async with Fetcher(Settings(allow_private_networks=True)) as fetcher:
        with pytest.raises(BlockedURLError) as err:
            await fetcher.fetch("trick", url.format(port=trap.port))
    assert "pw" not in str(err.value)
    assert trap.connections == 0


class RedirectServer:
    """An HTTP server on 127.0.0.2 answering every GET with 302 to a fixed Location."""

    def __init__(self, location: str) -> None:
        class _H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), _H)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


INTERNAL_TARGETS = [
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://172.16.5.4/",
    "http://192.168.1.1/admin", "http://100.64.0.1/", "http://100.127.255.254/",
    "http://[fd00::1]/", "http://rebind.test/", "http://127.0.0.1:{trap}/",
    "http://0177.0.0.1:{trap}/", "http://0x7f.0.0.1:{trap}/", "http://2130706433:{trap}/",
    "http://127.1:{trap}/", "http://[::ffff:127.0.0.1]:{trap}/", "http://localhost:{trap}/",
]


@pytest.mark.parametrize("target", INTERNAL_TARGETS)
async def test_redirect_to_internal_address_never_connects(
    monkeypatch: pytest.MonkeyPatch, trap: Trap, target: str,
) -> None:
    """A public-looking feed redirecting to metadata, private, CGNAT or any loopback spelling is
    refused on that hop: no connect attempt is made and the trap sees nothing."""
    real_resolve, real_reason = guard.resolve, guard.blocked_reason

    async def resolve(host: str, port: int) -> list[str]:
        fake = {"feeds.test": ["127.0.0.2"], "rebind.test": ["169.254.169.254"]}
        return fake.get(host) or await real_resolve(host, port)

    def reason(ip: guard.IPAddress) -> str | None:
        return None if ip == ipaddress.ip_address("127.0.0.2") else real_reason(ip)

    connects: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def spy(self: Any, host: str, port: int, *args: Any, **kw: Any) -> Any:
        connects.append(host)
        return await real_connect(self, host, port, *args, **kw)

    monkeypatch.setattr(guard, "resolve", resolve)
    monkeypatch.setattr(guard, "blocked_reason", reason)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    redirector = RedirectServer(target.format(trap=trap.port))
    try:
        async with Fetcher(Settings(allow_private_networks=False)) as fetcher:
            # BlockedURLError, or FetchError when httpx itself rejects the Location
            with pytest.raises(FeedError) as err:
                await fetcher.fetch("meta", f"http://feeds.test:{redirector.port}/rss")
    finally:
        redirector.close()
    assert err.value.feed == "meta"
    assert connects == ["127.0.0.2"]
    assert trap.connections == 0


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "data:text/xml,<rss/>", "javascript:alert(1)", "gopher://x.example/",
    "/var/feeds/a.xml", "feeds/a.xml", "//cdn.example/rss", "ftp://x.example/a.xml",
])
def test_feeds_yaml_refuses_non_http_urls(url: str) -> None:
    """feeds.yaml entries with other schemes, bare or relative paths fail validation."""
    with pytest.raises(ValidationError, match=r"only http and https|no host|bare path"):
        FeedConfig(url=url, name="x")


@asynccontextmanager
async def trickler(head: bytes, wait_request: bool) -> AsyncIterator[int]:
    """A server that sends ``head`` then one byte every 0.3 s for ever; yields its port."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if wait_request:
                await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            while True:
                writer.write(b"2")
                await writer.drain()
                await asyncio.sleep(0.3)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_trickling_smtp_server_hits_the_overall_deadline() -> None:
    """An SMTP server dribbling its greeting never trips a read timeout, but the overall
    deadline of the call does, as a retryable failure."""
    async with trickler(b"", wait_request=False) as port:
        channel = EmailChannel(EmailCfg(host="127.0.0.1", port=port, timeout=1.0),  # type: ignore[arg-type]
                               Renderer(ROOT / "alerts"))
        started = time.monotonic()
        with pytest.raises(RetryableDeliveryError, match=r"within 1 s"):
            await channel.send(sample_alert(), "desk@example.org", idempotency_key="k")
    assert time.monotonic() - started < 2.0


async def test_trickling_slack_webhook_hits_the_overall_deadline() -> None:
    """A webhook answering one body byte at a time is cut off at the call's deadline, retryable,
    with the webhook secret masked."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with trickler(head, wait_request=True) as port:
        url = f"http://127.0.0.1:{port}/services/T0SECRET/B0SECRET/tok3nSECRET"
        channel = SlackChannel(SlackCfg(webhook_url=SecretStr(url), timeout=1.0),  # type: ignore[arg-type]
                               Renderer(ROOT / "alerts"))
        started = time.monotonic()
        with pytest.raises(RetryableDeliveryError) as err:
            await channel.send(sample_alert(), "", idempotency_key="k")
        await channel.close()
    assert time.monotonic() - started < 2.0
    assert "SECRET" not in str(err.value)


async def test_unresolvable_smtp_and_slack_hosts_are_retryable() -> None:
    """DNS failure for the SMTP relay or the webhook host is a retryable delivery error."""
    renderer = Renderer(ROOT / "alerts")
    mail = EmailChannel(EmailCfg(host="smtp.nonexistent.invalid", port=587, timeout=5.0),  # type: ignore[arg-type]
                        renderer)
    with pytest.raises(RetryableDeliveryError, match=r"smtp\.nonexistent\.invalid"):
        await mail.send(sample_alert(), "desk@example.org", idempotency_key="k")
    url = "https://hooks.nonexistent.invalid/services/T0SECRET/B0SECRET/tok3nSECRET"
    slack = SlackChannel(SlackCfg(webhook_url=SecretStr(url)), renderer)  # type: ignore[arg-type]
    with pytest.raises(RetryableDeliveryError) as err:
        await slack.send(sample_alert(), "", idempotency_key="k")
    await slack.close()
    assert "SECRET" not in str(err.value)

