"""Fetch feed bytes over HTTP: conditional GET, own redirects, caps, deadlines, per-host limits.

Every failure leaves as a ``FeedError`` subclass carrying the feed name; URLs in messages
are redacted (no user-info, secret-looking query values masked).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType

import httpx

from monitor.clock import Clock, SystemClock
from monitor.errors import (
    BlockedURLError,
    FeedError,
    FeedGoneError,
    FetchError,
    HTTPStatusError,
    RateLimitedError,
    TooLargeError,
)
from monitor.feeds.backoff import parse_retry_after
from monitor.feeds.guard import (
    INSECURE_TLS,
    AddressBlockedError,
    GuardedTransport,
    check_url,
    redact_url,
)
from monitor.settings import Settings

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
# br and zstd are not offered: their Python decoders cannot bound output per call, and an
# unbounded decoder is exactly what a decompression bomb needs.
ACCEPT_ENCODING = "gzip, deflate"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
PERMANENT = frozenset({301, 308})
MAX_ENCODINGS = 3  # "gzip, gzip" is legal but deeper stacks only serve to amplify bombs


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """One successful fetch: the decoded body, or an empty body on 304."""

    status: int
    content: bytes
    url: str
    permanent_url: str | None
    etag: str | None
    last_modified: str | None
    content_type: str | None
    elapsed: float
    not_modified: bool


@dataclasses.dataclass(frozen=True)
class _Redirect:
    target: httpx.URL
    permanent: bool


class _Inflater:
    """One gzip or deflate layer whose output is capped per call.

    A compression bomb is stopped after ``cap`` bytes instead of after it has filled memory.
    """

    def __init__(self, feed: str, encoding: str, cap: int) -> None:
        self._feed, self._cap, self._produced = feed, cap, 0
        self._gzip = encoding in ("gzip", "x-gzip")
        self._raw_deflate = False  # some servers send deflate without the zlib header
        self._fed = False
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        if not data or self._zlib.eof:
            return b""
        self._fed = True
        try:
            out = self._zlib.decompress(data, self._cap - self._produced + 1)
        except zlib.error as exc:
            if self._gzip or self._produced or self._raw_deflate:
                raise FetchError(self._feed, f"corrupt compressed body: {exc}") from exc
            self._raw_deflate = True
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.feed(data)
        self._produced += len(out)
        if self._produced > self._cap:
            raise TooLargeError(
                self._feed, f"decompressed body exceeds {self._cap} bytes "
                "(SPILLOVER_MAX_DECODED_BYTES); possibly a compression bomb",
            )
        return out

    def finish(self) -> None:
        if self._fed and not self._zlib.eof:
            raise FetchError(self._feed, "compressed body is truncated")


class _Decoder:
    """The Content-Encoding stack, undone in reverse order of application."""

    def __init__(self, feed: str, header: str | None, cap: int) -> None:
        names = [e.strip().lower() for e in (header or "").split(",")]
        names = [n for n in names if n and n != "identity"]
        if len(names) > MAX_ENCODINGS:
            raise TooLargeError(feed, f"{len(names)} stacked content-encodings; refusing")
        unknown = [n for n in names if n not in ("gzip", "x-gzip", "deflate")]
        if unknown:
            raise FetchError(feed, f"unsupported Content-Encoding {unknown[0]!r}")
        self._layers = [_Inflater(feed, n, cap) for n in reversed(names)]

    def feed(self, data: bytes) -> bytes:
        for layer in self._layers:
            data = layer.feed(data)
        return data

    def finish(self) -> None:
        for layer in self._layers:
            layer.finish()


def _tls_reason(exc: BaseException) -> str | None:
    """The certificate or handshake problem buried in an httpx connect error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate rejected: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return f"TLS failed: {text}"
    return None


def translate(feed: str, url: str, exc: Exception) -> FeedError:
    """The FeedError for a transport exception from httpx or the guard."""
    where = redact_url(url)
    if isinstance(exc, AddressBlockedError):
        return BlockedURLError(feed, f"{where}: {exc}")
    if isinstance(exc, httpx.InvalidURL):
        return BlockedURLError(feed, f"not a valid URL: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
        return FetchError(feed, f"{where}: {kind} timed out")
    tls = _tls_reason(exc)
    if tls:
        return FetchError(
            feed, f"{where}: {tls}; set insecure_tls: true for this feed only if you trust it"
        )
    if isinstance(exc, httpx.ConnectError):
        return FetchError(feed, f"{where}: cannot connect: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError(feed, f"{where}: connection dropped or bad HTTP: {exc}")
    return FetchError(feed, f"{where}: {type(exc).__name__}: {exc}")


class Fetcher:
    """Fetches feeds for the whole process; use as ``async with Fetcher(settings) as f``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._ssl_context = ssl_context  # tests and private CAs; default: certifi/SSL_CERT_FILE
        self._global = asyncio.Semaphore(settings.max_concurrent_fetches)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._stack = AsyncExitStack()
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Fetcher:
        s = self._settings
        per_origin = httpx.Limits(
            max_connections=s.per_host_concurrency,
            max_keepalive_connections=s.per_host_concurrency,
        )
        transport = GuardedTransport(
            allow_private=s.allow_private_networks,
            ssl_context=self._ssl_context or httpx.create_ssl_context(verify=True),
            limits=per_origin, idle_after=max(300.0, 2 * s.fetch_timeout),
        )
        step = min(s.fetch_timeout, 15.0)
        self._client = await self._stack.enter_async_context(httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(step, pool=s.fetch_timeout),
            headers={"User-Agent": s.user_agent, "Accept": ACCEPT,
                     "Accept-Encoding": ACCEPT_ENCODING},
        ))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._client = None

    async def fetch(
        self, feed_name: str, url: str, *, etag: str | None = None,
        last_modified: str | None = None, insecure_tls: bool = False,
    ) -> FetchResult:
        """GET ``url`` conditionally, following redirects; raise FeedError subclasses."""
        if self._client is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        current = check_url(feed_name, url)
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        started = self._clock.monotonic()
        return await self._follow(feed_name, current, headers, insecure_tls, started)

    @asynccontextmanager
    async def _slots(self, host: str) -> AsyncIterator[None]:
        """A per-host slot, then a global one: feeds queued on a slow host hold no global slot."""
        per_host = self._hosts.get(host)
        if per_host is None:
            per_host = self._hosts[host] = asyncio.Semaphore(self._settings.per_host_concurrency)
        async with per_host, self._global:
            yield

    async def _follow(
        self, feed: str, url: httpx.URL, headers: dict[str, str], insecure: bool,
        started: float,
    ) -> FetchResult:
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # starts once a slot is held: queueing is not slowness
        seen = {str(url)}
        permanent: str | None = None
        chain_permanent = True
        for _ in range(self._settings.max_redirects + 1):
            try:
                async with self._slots(url.host):
                    deadline = deadline or loop.time() + self._settings.fetch_timeout
                    async with asyncio.timeout_at(deadline):
                        hop = await self._hop(feed, url, headers, insecure, started)
            except TimeoutError as exc:
                raise FetchError(
                    feed, f"{redact_url(url)}: no complete response within "
                    f"{self._settings.fetch_timeout:g} s (SPILLOVER_FETCH_TIMEOUT)",
                ) from exc
            except (httpx.HTTPError, httpx.InvalidURL, AddressBlockedError) as exc:
                raise translate(feed, str(url), exc) from exc
            if isinstance(hop, FetchResult):
                return _with_permanent(hop, permanent)
            chain_permanent = chain_permanent and hop.permanent
            if chain_permanent:
                permanent = str(hop.target)
            if str(hop.target) in seen:
                raise FetchError(feed, f"redirect loop: {redact_url(hop.target)} came back")
            seen.add(str(hop.target))
            url = hop.target
        raise FetchError(
            feed, f"more than {self._settings.max_redirects} redirects (SPILLOVER_MAX_REDIRECTS);"
            f" last went to {redact_url(url)}",
        )

    async def _hop(
        self, feed: str, url: httpx.URL, headers: dict[str, str], insecure: bool,
        started: float,
    ) -> FetchResult | _Redirect:
        assert self._client is not None  # noqa: S101 - checked in fetch()
        request = self._client.build_request(
            "GET", url, headers=headers, extensions={INSECURE_TLS: insecure}
        )
        response = await self._client.send(request, stream=True)
        try:
            status = response.status_code
            if status in REDIRECTS:
                return _redirect(feed, url, response)
            self._check_status(feed, url, response)
            content = b"" if status == 304 else await self._read_body(feed, response)
            return FetchResult(
                status=status, content=content, url=str(url), permanent_url=None,
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                content_type=response.headers.get("content-type"),
                elapsed=self._clock.monotonic() - started, not_modified=status == 304,
            )
        finally:
            await response.aclose()

    def _check_status(self, feed: str, url: httpx.URL, response: httpx.Response) -> None:
        status = response.status_code
        if status == 304 or 200 <= status < 300:
            return
        where = redact_url(url)
        if status == 410:
            raise FeedGoneError(feed, status, f"HTTP 410 Gone from {where}: feed deactivated")
        if status in (429, 503):
            retry = parse_retry_after(response.headers.get("retry-after"), self._clock.now())
            raise RateLimitedError(feed, status, retry)
        raise HTTPStatusError(feed, status, f"HTTP {status} from {where}")

    async def _read_body(self, feed: str, response: httpx.Response) -> bytes:
        """Stream the body under both caps; never hold more than the caps allow."""
        cap = self._settings.max_body_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise TooLargeError(
                feed, f"Content-Length {declared} exceeds {cap} bytes (SPILLOVER_MAX_BODY_BYTES)"
            )
        decoder = _Decoder(feed, response.headers.get("content-encoding"),
                           self._settings.max_decoded_bytes)
        received, parts = 0, []
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > cap:
                raise TooLargeError(
                    feed, f"body exceeds {cap} bytes (SPILLOVER_MAX_BODY_BYTES)"
                )
            parts.append(decoder.feed(chunk))
        decoder.finish()
        return b"".join(parts)


def _redirect(feed: str, url: httpx.URL, response: httpx.Response) -> _Redirect:
    location = response.headers.get("location")
    if not location:
        raise HTTPStatusError(
            feed, response.status_code,
            f"HTTP {response.status_code} redirect without Location from {redact_url(url)}",
        )
    if "\\" in location:
        raise BlockedURLError(feed, "redirect Location contains a backslash")
    try:
        target = url.join(location)
    except httpx.InvalidURL as exc:
        raise BlockedURLError(feed, f"redirect to an invalid URL: {exc}") from exc
    target = check_url(feed, target.copy_with(fragment=None))
    return _Redirect(target, response.status_code in PERMANENT)


def _with_permanent(result: FetchResult, permanent: str | None) -> FetchResult:
    if permanent is None:
        return result
    return dataclasses.replace(result, permanent_url=permanent)
