"""Fetcher against real loopback servers: conditional GET, redirects, caps, deadlines, TLS."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trustme

from monitor.errors import (
    BlockedURLError,
    FeedGoneError,
    FetchError,
    HTTPStatusError,
    RateLimitedError,
    TooLargeError,
)
from monitor.feeds.fetch import Fetcher
from monitor.settings import Settings
from tests.servers import LoopbackHTTPServer, Reply, Request

RSS = "<rss version='2.0'><channel><title>أخبار</title></channel></rss>".encode()
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def settings(**overrides: Any) -> Settings:
    """Loopback-friendly settings with the given overrides."""
    return Settings(allow_private_networks=True, **overrides)


@asynccontextmanager
async def raw_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """An asyncio server on 127.0.0.1 running ``script`` per connection; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def head(status: str = "200 OK", **headers: str) -> bytes:
    """A raw HTTP/1.1 response head."""
    lines = [f"HTTP/1.1 {status}", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_200_returns_body_validators_and_sends_feed_headers(
    http_server: LoopbackHTTPServer,
) -> None:
    """A 200 yields the body, ETag, Last-Modified, Content-Type; the request carries UA/Accept."""
    http_server.routes["/feed"] = Reply(200, RSS, {
        "ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
        "Content-Type": "application/rss+xml; charset=utf-8",
    })
    async with Fetcher(settings(user_agent="SpilloverTest/9")) as fetcher:
        result = await fetcher.fetch("news", http_server.url("/feed"))
    assert (result.status, result.content, result.not_modified) == (200, RSS, False)
    assert result.etag == '"v1"' and result.last_modified == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert result.content_type == "application/rss+xml; charset=utf-8"
    assert result.permanent_url is None and result.url == http_server.url("/feed")
    sent = http_server.hits("/feed")[0].headers
    assert sent["User-Agent"] == "SpilloverTest/9"
    assert "application/rss+xml" in sent["Accept"]
    assert sent["Accept-Encoding"] == "gzip, deflate"
    assert "If-None-Match" not in sent


async def test_conditional_get_sends_validators_and_304_is_not_modified(
    http_server: LoopbackHTTPServer,
) -> None:
    """Stored ETag/Last-Modified go out as If-None-Match/If-Modified-Since; 304 means no body."""
    def handler(req: Request) -> Reply:
        fresh = req.headers.get("If-None-Match") == '"v1"'
        return Reply(304) if fresh else Reply(200, RSS, {"ETag": '"v1"'})

    http_server.routes["/feed"] = handler
    async with Fetcher(settings()) as fetcher:
        result = await fetcher.fetch(
            "news", http_server.url("/feed"), etag='"v1"',
            last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
        )
    assert result.not_modified and result.status == 304 and result.content == b""
    sent = http_server.hits("/feed")[0].headers
    assert sent["If-Modified-Since"] == "Mon, 01 Jan 2024 00:00:00 GMT"


@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
    ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
])
async def test_compressed_bodies_are_decoded(
    http_server: LoopbackHTTPServer, encoding: str, encode: Callable[[bytes], bytes],
) -> None:
    """gzip, deflate (zlib or raw) and stacked gzip bodies come back decoded."""
    http_server.routes["/feed"] = Reply(200, encode(RSS * 50), {"Content-Encoding": encoding})
    async with Fetcher(settings()) as fetcher:
        result = await fetcher.fetch("news", http_server.url("/feed"))
    assert result.content == RSS * 50


@pytest.mark.parametrize("layers", [1, 2])
async def test_compression_bomb_is_stopped_at_the_decoded_cap(
    http_server: LoopbackHTTPServer, layers: int,
) -> None:
    """A body inflating to 64 MB (single or stacked gzip) raises TooLargeError at the 1 MB cap."""
    body = b"\0" * (64 << 20)
    for _ in range(layers):
        body = gzip.compress(body, compresslevel=6)
    encoding = ", ".join(["gzip"] * layers)
    http_server.routes["/bomb"] = Reply(200, body, {"Content-Encoding": encoding})
    async with Fetcher(settings(max_decoded_bytes=1 << 20)) as fetcher:
        with pytest.raises(TooLargeError, match="decompressed body exceeds") as err:
            await fetcher.fetch("bomb-feed", http_server.url("/bomb"))
    assert err.value.feed == "bomb-feed"


async def test_raw_body_over_the_cap_raises(http_server: LoopbackHTTPServer) -> None:
    """A plain body bigger than max_body_bytes raises TooLargeError."""
    http_server.routes["/big"] = Reply(200, b"x" * 300_000)
    async with Fetcher(settings(max_body_bytes=100_000)) as fetcher:
        with pytest.raises(TooLargeError):
            await fetcher.fetch("big", http_server.url("/big"))


async def test_declared_content_length_over_the_cap_is_refused_before_reading() -> None:
    """A Content-Length over the cap is refused at once, without waiting for the body."""
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(head(Content_Length=str(10**12)))
        await w.drain()
        await asyncio.sleep(30)

    async with raw_server(script) as port, Fetcher(settings(fetch_timeout=10)) as fetcher:
        started = time.monotonic()
        with pytest.raises(TooLargeError, match="Content-Length"):
            await fetcher.fetch("liar", f"http://127.0.0.1:{port}/")
    assert time.monotonic() - started < 2


async def test_body_shorter_than_content_length_is_a_fetch_error() -> None:
    """A connection closed before Content-Length bytes arrived raises FetchError, not a result."""
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(head(Content_Length="1000") + b"<rss>" * 20)
        await w.drain()

    async with raw_server(script) as port, Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="received 100 bytes, expected 1000"):
            await fetcher.fetch("short", f"http://127.0.0.1:{port}/")


async def test_truncated_gzip_stream_is_a_fetch_error(http_server: LoopbackHTTPServer) -> None:
    """A gzip body cut short (but framed correctly) raises FetchError instead of half a feed."""
    http_server.routes["/cut"] = Reply(200, gzip.compress(RSS * 100)[:-20],
                                       {"Content-Encoding": "gzip"})
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="truncated"):
            await fetcher.fetch("cut", http_server.url("/cut"))


async def test_endless_chunked_body_hits_the_raw_cap() -> None:
    """A chunked body that never ends raises TooLargeError once max_body_bytes is passed."""
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(head(Transfer_Encoding="chunked"))
        chunk = b"%x\r\n%s\r\n" % (16384, b"a" * 16384)
        while True:
            w.write(chunk)
            await w.drain()

    async with raw_server(script) as port, Fetcher(settings(max_body_bytes=1 << 20)) as fetcher:
        with pytest.raises(TooLargeError, match="body exceeds"):
            await fetcher.fetch("endless", f"http://127.0.0.1:{port}/")


async def test_trickling_server_hits_the_overall_deadline() -> None:
    """One byte a second never trips the read timeout, but the overall fetch deadline fires."""
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(head(Content_Length="100000"))
        while True:
            w.write(b"a")
            await w.drain()
            await asyncio.sleep(0.5)

    async with raw_server(script) as port, Fetcher(settings(fetch_timeout=1.5)) as fetcher:
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"no complete response within 1\.5 s"):
            await fetcher.fetch("trickle", f"http://127.0.0.1:{port}/")
    assert 1.4 < time.monotonic() - started < 3


async def test_a_stalled_feed_does_not_delay_the_others(http_server: LoopbackHTTPServer) -> None:
    """Five fast feeds fetched alongside a stalled one all finish long before the stall ends."""
    async def stall(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    http_server.routes["/fast"] = Reply(200, RSS)
    async with raw_server(stall) as port, Fetcher(settings(fetch_timeout=2)) as fetcher:
        started = time.monotonic()
        stalled = asyncio.create_task(fetcher.fetch("stalled", f"http://127.0.0.1:{port}/"))
        fast = await asyncio.gather(*(
            fetcher.fetch(f"fast{i}", http_server.url("/fast")) for i in range(5)
        ))
        fast_elapsed = time.monotonic() - started
        assert not stalled.done()
        with pytest.raises(FetchError):
            await stalled
    assert [r.content for r in fast] == [RSS] * 5
    assert fast_elapsed < 1.0


def concurrency_probe(delay: float) -> tuple[Callable[[Request], Reply], list[int]]:
    """A handler that records the peak number of requests it is serving at once."""
    lock, state = threading.Lock(), [0, 0]  # [current, peak]

    def handler(_req: Request) -> Reply:
        with lock:
            state[0] += 1
            state[1] = max(state[1], state[0])
        time.sleep(delay)
        with lock:
            state[0] -= 1
        return Reply(200, RSS)

    return handler, state


@pytest.mark.parametrize(("per_host", "overall", "peak"), [(2, 64, 2), (10, 3, 3)])
async def test_per_host_and_global_concurrency_limits_hold(
    http_server: LoopbackHTTPServer, per_host: int, overall: int, peak: int,
) -> None:
    """Requests in flight never exceed per_host_concurrency per host nor the global cap."""
    handler, state = concurrency_probe(0.15)
    http_server.routes["/slow"] = handler
    cfg = settings(per_host_concurrency=per_host, max_concurrent_fetches=overall)
    async with Fetcher(cfg) as fetcher:
        await asyncio.gather(*(fetcher.fetch(f"f{i}", http_server.url("/slow")) for i in range(8)))
    assert state[1] == peak


async def test_permanent_redirect_chain_sets_permanent_url(
    http_server: LoopbackHTTPServer,
) -> None:
    """301 then 308 report the final URL as permanent; the fetch lands on the final body."""
    http_server.routes["/old"] = Reply(301, headers={"Location": "/middle"})
    http_server.routes["/middle"] = Reply(308, headers={"Location": http_server.url("/new")})
    http_server.routes["/new"] = Reply(200, RSS)
    async with Fetcher(settings()) as fetcher:
        result = await fetcher.fetch("moved", http_server.url("/old"))
    assert result.content == RSS and result.url == http_server.url("/new")
    assert result.permanent_url == http_server.url("/new")


@pytest.mark.parametrize(("first", "second", "expected"), [
    (302, 301, None), (301, 307, "/middle"), (303, 302, None),
])
async def test_temporary_redirects_do_not_move_the_stored_url(
    http_server: LoopbackHTTPServer, first: int, second: int, expected: str | None,
) -> None:
    """Only the leading run of 301/308 hops counts as permanent; 302/303/307 never do."""
    http_server.routes["/old"] = Reply(first, headers={"Location": "/middle"})
    http_server.routes["/middle"] = Reply(second, headers={"Location": "/new"})
    http_server.routes["/new"] = Reply(200, RSS)
    async with Fetcher(settings()) as fetcher:
        result = await fetcher.fetch("moved", http_server.url("/old"))
    assert result.content == RSS
    assert result.permanent_url == (expected and http_server.url(expected))


async def test_redirect_loop_is_reported(http_server: LoopbackHTTPServer) -> None:
    """A→B→A stops with a FetchError saying it is a loop."""
    http_server.routes["/a"] = Reply(302, headers={"Location": "/b"})
    http_server.routes["/b"] = Reply(302, headers={"Location": "/a"})
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="redirect loop"):
            await fetcher.fetch("loop", http_server.url("/a"))


async def test_redirect_chain_longer_than_the_limit_is_reported(
    http_server: LoopbackHTTPServer,
) -> None:
    """More hops than max_redirects raise FetchError naming the limit; the limit itself passes."""
    for i in range(4):
        http_server.routes[f"/{i}"] = Reply(302, headers={"Location": f"/{i + 1}"})
    http_server.routes["/4"] = Reply(200, RSS)
    async with Fetcher(settings(max_redirects=3)) as fetcher:
        with pytest.raises(FetchError, match="more than 3 redirects"):
            await fetcher.fetch("long", http_server.url("/0"))
    async with Fetcher(settings(max_redirects=4)) as fetcher:
        assert (await fetcher.fetch("long", http_server.url("/0"))).content == RSS


@pytest.mark.parametrize("location", [
    "file:///etc/passwd", "ftp://127.0.0.1/feed", "http://user:pw@127.0.0.1/feed",
    "javascript:alert(1)", "http:\\\\127.0.0.1\\feed",
])
async def test_redirect_to_a_forbidden_url_is_blocked(
    http_server: LoopbackHTTPServer, location: str,
) -> None:
    """A redirect to another scheme, to user-info or with backslashes raises BlockedURLError."""
    http_server.routes["/feed"] = Reply(302, headers={"Location": location})
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(BlockedURLError) as err:
            await fetcher.fetch("redir", http_server.url("/feed"))
    assert "pw" not in str(err.value)


async def test_410_is_feed_gone(http_server: LoopbackHTTPServer) -> None:
    """410 raises FeedGoneError so the feed can be deactivated."""
    http_server.routes["/gone"] = Reply(410)
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FeedGoneError) as err:
            await fetcher.fetch("gone", http_server.url("/gone"))
    assert err.value.status == 410 and err.value.feed == "gone"


@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "120", 120.0), (503, str(10**10), 86400.0), (429, None, None),
])
async def test_rate_limits_carry_a_clamped_retry_after(
    http_server: LoopbackHTTPServer, status: int, header: str | None, expected: float | None,
) -> None:
    """429/503 raise RateLimitedError with Retry-After in seconds, clamped to a day."""
    http_server.routes["/busy"] = Reply(status, headers={"Retry-After": header} if header else {})
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(RateLimitedError) as err:
            await fetcher.fetch("busy", http_server.url("/busy"))
    assert err.value.status == status and err.value.retry_after == expected


async def test_http_date_retry_after_is_measured_from_the_clock(
    http_server: LoopbackHTTPServer,
) -> None:
    """An HTTP-date Retry-After is turned into seconds from the Fetcher's clock."""
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    class Fixed:
        def now(self) -> datetime:
            return now

        def monotonic(self) -> float:
            return time.monotonic()

    later = (now + timedelta(minutes=10)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    http_server.routes["/busy"] = Reply(503, headers={"Retry-After": later})
    async with Fetcher(settings(), clock=Fixed()) as fetcher:
        with pytest.raises(RateLimitedError) as err:
            await fetcher.fetch("busy", http_server.url("/busy"))
    assert err.value.retry_after == 600.0


@pytest.mark.parametrize("status", [400, 403, 404, 500, 502])
async def test_other_error_statuses_raise_http_status_error_without_secrets(
    http_server: LoopbackHTTPServer, status: int,
) -> None:
    """Other 4xx/5xx raise HTTPStatusError naming feed and status, with secrets masked."""
    http_server.routes["/private"] = Reply(status)
    url = http_server.url("/private?api_key=SECRET123&lang=ar")
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(HTTPStatusError) as err:
            await fetcher.fetch("desk-feed", url)
    message = str(err.value)
    assert err.value.status == status and "desk-feed" in message and str(status) in message
    assert "SECRET123" not in message and "lang=ar" in message


async def test_connection_refused_is_a_fetch_error() -> None:
    """Nothing listening raises FetchError naming the feed."""
    async with raw_server(lambda _r, _w: asyncio.sleep(0)) as port:
        pass  # closed again: the port is now very likely refused
    async with Fetcher(settings()) as fetcher:
        with pytest.raises(FetchError, match="cannot connect") as err:
            await fetcher.fetch("down", f"http://127.0.0.1:{port}/")
    assert err.value.feed == "down"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throw-away certificate authority that no system trusts."""
    return trustme.CA()


def server_tls(ca: trustme.CA, *names: str, expired: bool = False) -> ssl.SSLContext:
    """A server TLS context with a leaf cert for ``names`` signed by ``ca``."""
    past = datetime.now(UTC) - timedelta(days=30)
    dates = {"not_before": past - timedelta(days=30), "not_after": past} if expired else {}
    leaf = ca.issue_cert(*names, **dates)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


async def serve_rss(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answer one request with a small feed."""
    w.write(head(Content_Length=str(len(RSS))) + RSS)
    await w.drain()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_untrusted_certificate_fails_closed_unless_insecure_tls(ca: trustme.CA) -> None:
    """A cert from an unknown CA is refused naming the reason; insecure_tls=True accepts it."""
    async with raw_server(serve_rss, server_tls(ca, "127.0.0.1")) as port, Fetcher(
        settings()
    ) as fetcher:
        with pytest.raises(FetchError, match="certificate") as err:
            await fetcher.fetch("tls", f"https://127.0.0.1:{port}/")
        assert "insecure_tls" in str(err.value)
        result = await fetcher.fetch("tls", f"https://127.0.0.1:{port}/", insecure_tls=True)
    assert result.content == RSS


async def test_trusted_certificate_is_accepted(ca: trustme.CA) -> None:
    """With the CA trusted, HTTPS to a matching name succeeds (SNI/hostname = URL host)."""
    tls = server_tls(ca, "localhost")
    async with raw_server(serve_rss, tls) as port, Fetcher(
        settings(), ssl_context=trusting(ca)
    ) as fetcher:
        result = await fetcher.fetch("tls", f"https://localhost:{port}/")
    assert result.content == RSS


@pytest.mark.parametrize(("names", "expired", "reason"), [
    (("other.example",), False, "mismatch"),
    (("127.0.0.1",), True, "expired"),
])
async def test_wrong_host_and_expired_certificates_fail_closed(
    ca: trustme.CA, names: tuple[str, ...], expired: bool, reason: str,
) -> None:
    """Even from a trusted CA, a wrong-host or expired cert raises FetchError naming why."""
    tls = server_tls(ca, *names, expired=expired)
    async with raw_server(serve_rss, tls) as port, Fetcher(
        settings(), ssl_context=trusting(ca)
    ) as fetcher:
        with pytest.raises(FetchError, match=reason):
            await fetcher.fetch("tls", f"https://127.0.0.1:{port}/")
