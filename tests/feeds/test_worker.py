"""Tests for monitor.feeds.worker: parsing in a memory- and time-capped pool that recovers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.errors import ParseError
from monitor.feeds.worker import ParserPool
from monitor.models import Article

DATA = Path(__file__).resolve().parent.parent / "data" / "feeds"
ENGLISH = (DATA / "english_rss.xml").read_bytes()


@pytest.fixture
def pool() -> Iterator[ParserPool]:
    with ParserPool(workers=1, memory_limit_mb=200, timeout=20.0) as parser_pool:
        yield parser_pool


async def parse_english(pool: ParserPool) -> list[Article]:
    return await pool.parse(ENGLISH, feed_name="english", feed_url="https://ex.com/rss")


async def test_parses_in_worker(pool: ParserPool) -> None:
    """A normal feed parses in the worker and comes back as Article objects."""
    articles = await parse_english(pool)
    assert articles[0].id == "harbor-line-10421"
    assert all(isinstance(a, Article) for a in articles)


async def test_parse_error_crosses_process(pool: ParserPool) -> None:
    """A ParseError in the worker is raised in the caller with the feed name and reason."""
    with pytest.raises(ParseError, match=r"feed challenge: not an RSS/Atom feed .*HTML page"):
        await pool.parse((DATA / "challenge.html").read_bytes(), feed_name="challenge",
                         feed_url="https://ex.com/", content_type="text/html")


async def test_memory_bomb_fails_then_pool_recovers(pool: ParserPool) -> None:
    """A body needing more memory than the cap fails with ParseError; the next feed still parses."""
    bomb = (b'<rss version="2.0"><channel><item><title>' + b"x" * 60_000_000
            + b"</title></item></channel></rss>")
    with pytest.raises(ParseError, match=r"feed bomb: .*memory"):
        await pool.parse(bomb, feed_name="bomb", feed_url="https://ex.com/")
    assert len(await parse_english(pool)) == 3


async def test_timeout_fails_then_pool_recovers() -> None:
    """A parse over the timeout is stopped with ParseError; the restarted pool parses the next."""
    items = "".join(f"<item><title>s{i}</title><guid>g{i}</guid></item>" for i in range(50_000))
    slow = f'<rss version="2.0"><channel>{items}</channel></rss>'.encode()
    with ParserPool(workers=1, memory_limit_mb=400, timeout=0.5) as pool:
        await pool.warm_up()  # the timeout must catch the parse, not the worker's start-up
        with pytest.raises(ParseError, match=r"feed slow: parsing took longer than 0\.5s"):
            await pool.parse(slow, feed_name="slow", feed_url="https://ex.com/", max_items=100_000)
        await pool.warm_up()
        assert len(await parse_english(pool)) == 3


async def test_closed_pool_refuses() -> None:
    """After close() the pool refuses work instead of hanging."""
    pool = ParserPool(workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await parse_english(pool)
