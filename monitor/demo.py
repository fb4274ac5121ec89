"""The offline demo: serve seeds/feeds on loopback; config/ with seeds/feeds.yaml as its feeds."""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.app import Runtime


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the demo's output to what Spillover prints."""


@contextmanager
def serve_seed_feeds(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (random port) for the duration; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def demo_config(root: Path, workdir: Path, base_url: str) -> Path:
    """A config dir: the shipped config/ with seeds/feeds.yaml as its feeds."""
    config = workdir / "config"
    shutil.copytree(root / "config", config, ignore=shutil.ignore_patterns("feeds.yaml"))
    shutil.copy(root / "seeds" / "feeds.yaml", config / "feeds.yaml")
    os.environ["SPILLOVER_DEMO_URL"] = base_url
    return config


def print_ingested(rt: Runtime) -> None:
    """What came in: language, feed, score, title; then the alerts queued."""
    rows = rt.analyzer.judged
    print(f"\n== {len(rows)} articles ingested ==")
    for article, verdict in rows:
        flag = "ALERT" if verdict.watchlists else "     "
        print(f"{flag} {verdict.lang:5} {article.feed:20} {verdict.score:0.2f}  "
              f"{article.title[:90]}")
    print(f"== {rt.analyzer.alerts_queued} alert deliveries queued ==")
