"""Poll N feeds from a local server through the real Fetcher (+ parser); compare to feedparser.

Usage: python bench/poll.py [--feeds 2000] [--latency-ms 100] [--concurrency 64] [--sample 200]

A raw asyncio HTTP server runs in a subprocess (so it does not share our GIL) on --origins
ports (standing in for distinct sites) and serves /feed/<i>.xml: an RSS feed of 20
English/Arabic items, gzip when asked, with an ETag. One feed
in ten changes on every request; the rest answer 304 to a matching If-None-Match. Each
response waits --latency-ms first, standing in for the round trip and server time of a real
feed host (0 gives the pure-CPU figure). The Fetcher polls every feed twice (first poll: 200s,
second: mostly 304s); then a sequential ``feedparser.parse(url)`` loop fetches a sample and
its time is extrapolated to N feeds.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

CHANGING_EVERY = 10  # feed i changes on every request when i % 10 == 0


def rss(i: int, version: int) -> bytes:
    """Feed ``i`` at ``version``: 20 items, half English, half Arabic."""
    items = []
    for n in range(20):
        if n % 2:
            title, desc = f"Border clashes reported near crossing {n}", "Officials said shelling."
        else:
            title, desc = f"اشتباكات قرب المعبر {n}", "قال مسؤولون إن القصف استمر ليلا."
        items.append(
            f"<item><title>{title}</title><link>https://news.example/{i}/{version}/{n}</link>"
            f"<guid>https://news.example/{i}/{version}/{n}</guid><description>{desc}</description>"
            f"<pubDate>Wed, 01 May 2024 12:{n:02d}:00 GMT</pubDate></item>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>Feed {i}</title><link>https://news.example/{i}</link>{''.join(items)}"
        "</channel></rss>"
    ).encode()


async def serve(latency: float, origins: int) -> None:
    """The feed server (subprocess): prints its ports, then serves until killed."""
    cache: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    versions: Counter[int] = Counter()

    def reply(path: str, headers: dict[str, str]) -> bytes:
        i = int(path.rsplit("/", 1)[-1].split(".")[0])
        if i % CHANGING_EVERY == 0:
            versions[i] += 1
        etag = f'"{i}-{versions[i]}"'
        if headers.get("if-none-match") == etag:
            return f"HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n".encode()
        key = (i, versions[i])
        if key not in cache:
            plain = rss(i, versions[i])
            cache[key] = (plain, gzip.compress(plain, 6))
        zipped = "gzip" in headers.get("accept-encoding", "")
        body = cache[key][1 if zipped else 0]
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml; charset=utf-8\r\n"
                f"ETag: {etag}\r\nContent-Length: {len(body)}\r\n"
                + ("Content-Encoding: gzip\r\n" if zipped else "") + "\r\n")
        return head.encode() + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                if latency:
                    await asyncio.sleep(latency)
                writer.write(reply(path, headers))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
               for _ in range(origins)]
    print(*(srv.sockets[0].getsockname()[1] for srv in servers), flush=True)
    await asyncio.gather(*(srv.serve_forever() for srv in servers))


@dataclass
class Round:
    """Figures for one polling round."""

    wall: float
    cpu: float
    statuses: Counter[str]
    articles: int


def cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def poll_round(fetcher: Any, urls: list[str], state: dict[str, tuple[Any, Any]],
                     parse: Any) -> Round:
    """Fetch every URL concurrently (conditional on ``state``), parse 200s, update state."""
    from monitor.errors import FeedError

    statuses: Counter[str] = Counter()
    articles = 0

    async def one(i: int, url: str) -> None:
        nonlocal articles
        etag, modified = state.get(url, (None, None))
        try:
            result = await fetcher.fetch(f"feed{i}", url, etag=etag, last_modified=modified)
        except FeedError as exc:
            statuses[type(exc).__name__] += 1
            return
        statuses[str(result.status)] += 1
        state[url] = (result.etag, result.last_modified)
        if parse is not None and not result.not_modified:
            articles += len(parse(result.content, feed_name=f"feed{i}", feed_url=url,
                                  content_type=result.content_type))

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i, url) for i, url in enumerate(urls)))
    return Round(time.perf_counter() - t0, cpu_seconds() - cpu0, statuses, articles)


def sequential_baseline(urls: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds per feed of a plain sequential ``feedparser.parse(url)`` loop."""
    import feedparser

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for url in urls:
        result = feedparser.parse(url)
        assert result.entries, f"baseline got no entries from {url}"
    return (time.perf_counter() - t0) / len(urls), (cpu_seconds() - cpu0) / len(urls)


def load_parser() -> Any:
    """monitor.feeds.parse.parse_feed if it exists, else None (fetch only)."""
    try:
        from monitor.feeds.parse import parse_feed
    except ImportError:
        return None
    return parse_feed


def report(name: str, n: int, r: Round) -> None:
    """Print one round's figures."""
    rate = n / r.wall
    print(f"{name}: {n} feeds in {r.wall:.2f} s = {rate:.0f} feeds/s = {rate * 60:.0f} feeds/min;"
          f" CPU {r.cpu:.2f} s ({100 * r.cpu / r.wall:.0f}% of one core);"
          f" statuses {dict(r.statuses)}; articles parsed {r.articles}")


async def bench(args: argparse.Namespace, urls: list[str]) -> tuple[Round, Round]:
    """Two polling rounds through the real Fetcher."""
    from monitor.feeds.fetch import Fetcher
    from monitor.settings import Settings

    # The origins are ports of one loopback host, so the per-host limit (default 4, polite for
    # real sites) is raised to the global limit; the guard is off because it is loopback.
    settings = Settings(allow_private_networks=True, per_host_concurrency=args.concurrency,
                        max_concurrent_fetches=args.concurrency)
    parse = None if args.no_parse else load_parser()
    print(f"parser: {'monitor.feeds.parse.parse_feed' if parse else 'none (fetch only)'}")
    state: dict[str, tuple[Any, Any]] = {}
    async with Fetcher(settings) as fetcher:
        first = await poll_round(fetcher, urls, state, parse)
        second = await poll_round(fetcher, urls, state, parse)
    return first, second


def main() -> None:
    """Run the server subprocess, the Fetcher rounds, and the sequential baseline."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeds", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--origins", type=int, default=32,
                    help="listening ports, standing in for distinct feed sites")
    ap.add_argument("--no-parse", action="store_true", help="fetch only, skip the parser")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.latency_ms / 1000, args.origins))
        return
    command = [sys.executable, __file__, "--serve", "--latency-ms", str(args.latency_ms),
               "--origins", str(args.origins)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ports = [int(p) for p in server.stdout.readline().split()]
        urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/feed/{i}.xml"
                for i in range(args.feeds)]
        print(f"{args.feeds} feeds on {len(ports)} origins, server latency "
              f"{args.latency_ms:g} ms, concurrency {args.concurrency}")
        first, second = asyncio.run(bench(args, urls))
        report("fetcher poll 1 (cold)", args.feeds, first)
        report("fetcher poll 2 (conditional)", args.feeds, second)
        sample = urls[1::max(1, args.feeds // args.sample)][: args.sample]
        per_feed, cpu_per_feed = sequential_baseline(sample)
        seq = per_feed * args.feeds
        print(f"sequential feedparser.parse(url): {len(sample)} feeds timed, "
              f"extrapolated to {args.feeds}: {seq:.1f} s ({60 / per_feed:.0f} feeds/min; "
              f"CPU {cpu_per_feed * 1000:.1f} ms/feed)")
        print(f"speed-up vs sequential: poll 1 {seq / first.wall:.1f}x, "
              f"poll 2 {seq / second.wall:.1f}x")
        print(f"peak RSS of the polling process: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
