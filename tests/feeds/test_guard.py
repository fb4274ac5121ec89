"""The SSRF guard: URL rules, the address policy, and refusals proven by a trap listener."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from monitor.errors import BlockedURLError
from monitor.feeds import guard
from monitor.feeds.fetch import Fetcher
from monitor.feeds.guard import blocked_reason, check_url, redact_url
from monitor.settings import Settings
from tests.servers import LoopbackHTTPServer, Reply, Trap

GUARDED = Settings(allow_private_networks=False)  # conftest turns the setting on by default


@pytest.fixture
def trap() -> Iterator[Trap]:
    """A connection-counting listener; tests assert it saw nothing."""
    listener = Trap()
    yield listener
    listener.close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::",
    "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe", "::7f00:1", "fec0::1",
])
def test_non_public_addresses_are_blocked(address: str) -> None:
    """Loopback, private, link-local, CGNAT, multicast, reserved and IPv6 wrappers are refused."""
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111",
                                     "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    """Globally routable addresses (also IPv4-mapped public ones) pass."""
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_reason_names_the_category() -> None:
    """The reason says what kind of address it is, including the wrapped IPv4."""
    assert blocked_reason(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert "loopback" in (blocked_reason(ipaddress.ip_address("::ffff:127.0.0.1")) or "")


@pytest.mark.parametrize(("url", "reason"), [
    ("file:///etc/passwd", "scheme"), ("javascript:alert(1)", "scheme"),
    ("data:text/xml,<rss/>", "scheme"), ("ftp://example.com/feed.xml", "scheme"),
    ("gopher://example.com/", "scheme"), ("http://evil@example.com/", "user-info"),
    ("https://user:pass@example.com/rss", "user-info"), ("http://example.com\\@evil/", "backslash"),
    ("http://exa mple.com/", "space"), ("http:///feed", "host"), ("example.com/feed", "scheme"),
])
def test_forbidden_urls_are_refused(url: str, reason: str) -> None:
    """Non-http schemes, user-info, backslashes, spaces and missing hosts raise BlockedURLError."""
    with pytest.raises(BlockedURLError, match=reason) as err:
        check_url("feed-a", url)
    assert err.value.feed == "feed-a" and "pass" not in str(err.value)


def test_plain_feed_urls_are_accepted() -> None:
    """Ordinary http/https feed URLs, including Arabic paths, pass the URL rules."""
    assert check_url("f", "https://example.com/rss?lang=ar").host == "example.com"
    assert check_url("f", "http://news.example/أخبار.xml").scheme == "http"


def test_redact_url_strips_credentials_and_secret_parameters() -> None:
    """Printed URLs lose user-info and secret-looking query values but keep the rest."""
    text = redact_url("https://bob:hunter2@example.com/feed?token=abc123&cat=world&api_key=zz")
    assert "hunter2" not in text and "bob" not in text and "abc123" not in text
    assert "zz" not in text and "cat=world" in text and "example.com/feed" in text


@pytest.mark.parametrize("host", [
    "127.0.0.1", "0177.0.0.1", "0x7f.0.0.1", "2130706433", "127.1", "[::ffff:127.0.0.1]",
    "localhost", "[::ffff:7f00:1]",
])
async def test_loopback_in_any_spelling_is_refused_without_connecting(
    trap: Trap, host: str,
) -> None:
    """Every spelling of 127.0.0.1 (or a name for it) is refused; the trap sees nothing."""
    async with Fetcher(GUARDED) as fetcher:
        with pytest.raises(BlockedURLError) as err:
            await fetcher.fetch("sneaky", f"http://{host}:{trap.port}/feed")
    assert err.value.feed == "sneaky"
    assert trap.connections == 0


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]], public: set[str],
) -> None:
    """Answer DNS from ``answers`` and treat the ``public`` addresses as globally routable."""
    real = guard.blocked_reason

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    def reason(ip: guard.IPAddress) -> str | None:
        return None if str(ip) in public else real(ip)

    monkeypatch.setattr(guard, "resolve", resolve)
    monkeypatch.setattr(guard, "blocked_reason", reason)


async def test_redirect_to_an_internal_host_is_checked_on_that_hop(
    monkeypatch: pytest.MonkeyPatch, http_server: LoopbackHTTPServer, trap: Trap,
) -> None:
    """A public feed redirecting to a name that resolves privately is refused at the second hop."""
    fake_dns(monkeypatch, {"feeds.test": ["127.0.0.1"], "internal.test": ["::ffff:127.0.0.1"]},
             public={"127.0.0.1"})
    http_server.routes["/feed"] = Reply(
        302, headers={"Location": f"http://internal.test:{trap.port}/admin"}
    )
    async with Fetcher(GUARDED) as fetcher:
        with pytest.raises(BlockedURLError, match=r"internal\.test resolves to"):
            await fetcher.fetch("hop", f"http://feeds.test:{http_server.port}/feed")
    assert len(http_server.hits("/feed")) == 1
    assert trap.connections == 0


async def test_any_private_answer_among_several_blocks_the_host(
    monkeypatch: pytest.MonkeyPatch, trap: Trap,
) -> None:
    """If one of several resolved addresses is private the host is refused outright."""
    fake_dns(monkeypatch, {"mixed.test": ["127.0.0.1", "::ffff:10.0.0.1"]}, public={"127.0.0.1"})
    async with Fetcher(GUARDED) as fetcher:
        with pytest.raises(BlockedURLError, match=r"10\.0\.0\.1"):
            await fetcher.fetch("mixed", f"http://mixed.test:{trap.port}/")
    assert trap.connections == 0


async def test_connection_goes_to_the_checked_address_with_the_original_host(
    monkeypatch: pytest.MonkeyPatch, http_server: LoopbackHTTPServer,
) -> None:
    """The guard connects to the IP it checked (no second lookup) and keeps the Host header."""
    fake_dns(monkeypatch, {"feeds.test": ["127.0.0.1"]}, public={"127.0.0.1"})
    http_server.routes["/feed"] = Reply(200, b"<rss/>")
    async with Fetcher(GUARDED) as fetcher:
        result = await fetcher.fetch("ok", f"http://feeds.test:{http_server.port}/feed")
    assert result.content == b"<rss/>"
    assert http_server.hits("/feed")[0].headers["Host"] == f"feeds.test:{http_server.port}"


async def test_allow_private_networks_lets_loopback_feeds_through(
    http_server: LoopbackHTTPServer,
) -> None:
    """With the operator opt-in, a feed on loopback is fetched normally."""
    http_server.routes["/feed"] = Reply(200, b"<rss/>")
    async with Fetcher(Settings(allow_private_networks=True)) as fetcher:
        result = await fetcher.fetch("lan", http_server.url("/feed"))
    assert result.content == b"<rss/>"


async def test_unresolvable_host_is_a_fetch_error_naming_dns() -> None:
    """A name that does not resolve raises a FetchError that says the DNS lookup failed."""
    from monitor.errors import FetchError

    async with Fetcher(GUARDED) as fetcher:
        with pytest.raises(FetchError, match="DNS lookup"):
            await fetcher.fetch("nx", "http://does-not-exist.invalid/feed")
