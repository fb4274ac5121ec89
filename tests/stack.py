"""A whole Spillover deployment on loopback for end-to-end tests: feeds, SMTP, Slack, processes."""

from __future__ import annotations

import email
import email.policy
import html
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import yaml
from aiosmtpd.controller import Controller

from tests.channels.conftest import Recorder
from tests.conftest import free_port
from tests.servers import LoopbackHTTPServer, Reply

ROOT = Path(__file__).resolve().parent.parent
FOUNDING = (ROOT / "seeds" / "founding-article.txt").read_text(encoding="utf-8").strip()
# Two escalation stories in different regions and signals (never grouped), for daemon tests.
STRIKE = ("tyre-1", "Israeli air strikes hit Hezbollah positions near Tyre in southern Lebanon",
          "Israeli warplanes struck Hezbollah positions near the city of Tyre in southern "
          "Lebanon overnight, the army said, as cross-border fire intensified.")
TANKER = ("hodeidah-1", "Houthi missile strikes tanker in the Red Sea off Hodeidah",
          "A Houthi anti-ship missile hit a commercial tanker in the Red Sea off the Yemeni "
          "port of Hodeidah, setting it ablaze, maritime security officials said.")
MODEL_CACHE = os.environ.get("SPILLOVER_MODEL_CACHE", str(ROOT / ".cache" / "models"))


def rss(items: Sequence[tuple[str, str, str]], *, encoding: str = "utf-8",
        declare: bool = True) -> bytes:
    """An RSS 2.0 document from (guid, title, description) triples."""
    body = "".join(
        f"<item><guid isPermaLink=\"false\">{g}</guid><title>{html.escape(t)}</title>"
        f"<link>https://news.example.org/{g}</link>"
        f"<pubDate>Tue, 24 Nov 2026 10:00:00 GMT</pubDate>"
        f"<description>{html.escape(d)}</description></item>\n"
        for g, t, d in items)
    decl = f'<?xml version="1.0" encoding="{encoding}"?>' if declare else '<?xml version="1.0"?>'
    doc = f"{decl}\n<rss version=\"2.0\"><channel><title>t</title>\n{body}</channel></rss>\n"
    return doc.encode(encoding)


@dataclass
class Stack:
    """Loopback feeds + Slack stand-in, aiosmtpd, a config dir and a state dir."""

    workdir: Path
    http: LoopbackHTTPServer
    smtp: Recorder
    smtp_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "config"

    def set_feeds(self, feeds: dict[str, bytes], **extra: object) -> None:
        """Serve each feed at /<name>.xml and write feeds.yaml listing them."""
        entries = []
        for name, body in feeds.items():
            self.http.routes[f"/{name}.xml"] = Reply(200, body, {"Content-Type": "application/xml"})
            entries.append({"url": self.http.url(f"/{name}.xml"), "name": name, "interval": 30,
                            **extra})
        (self.config / "feeds.yaml").write_text(yaml.safe_dump({"feeds": entries}),
                                                encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a spillover process wired to this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLOVER_")}
        env.update({
            "SPILLOVER_DATA_DIR": str(self.workdir / "var"),
            "SPILLOVER_MODEL_CACHE": MODEL_CACHE,
            "SPILLOVER_ALLOW_PRIVATE_NETWORKS": "1",
            "SPILLOVER_SMTP_HOST": "127.0.0.1",
            "SPILLOVER_SMTP_PORT": str(self.smtp_port),
            "SPILLOVER_SMTP_TLS": "none",
            "SPILLOVER_EMAIL_FROM": "spillover@example.org",
            "SPILLOVER_EMAIL_TO": "desk@example.org",
            "SPILLOVER_SLACK_WEBHOOK_URL": self.http.url("/hook/T000/B000/secret-token"),
            "SPILLOVER_DRAIN_SECONDS": "10",
            **extra,
        })
        return env

    def run(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `python -m monitor ARGS` to completion."""
        return subprocess.run(
            [sys.executable, "-m", "monitor", *args], cwd=self.workdir, env=self.env(**env),
            capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start `python -m monitor ARGS` in the background (stderr to a file)."""
        log = (self.workdir / f"proc{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "monitor", *args], cwd=self.workdir,
                                env=self.env(**env), stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        self.procs.append(proc)
        return proc

    def log_of(self, index: int) -> str:
        return (self.workdir / f"proc{index}.log").read_text(encoding="utf-8", errors="replace")

    def emails(self) -> list[EmailMessage]:
        """Every message aiosmtpd accepted, parsed with the standard library."""
        return [email.message_from_bytes(m.content, policy=email.policy.default)  # type: ignore[misc]
                for m in self.smtp.messages]

    def slack_posts(self) -> list[bytes]:
        return [r.body for r in self.http.requests if r.path.startswith("/hook/")]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


def wait_for(predicate: object, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def make_stack(tmp: Path) -> Iterator[Stack]:
    """Build and tear down a Stack in ``tmp``."""
    shutil.copytree(ROOT / "config", tmp / "config", ignore=shutil.ignore_patterns("schema"))
    shutil.copytree(ROOT / "alerts", tmp / "alerts")
    http = LoopbackHTTPServer()
    http.routes["/hook/T000/B000/secret-token"] = Reply(200, b"ok")
    http.start()
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    stack = Stack(tmp, http, recorder, port)
    try:
        yield stack
    finally:
        stack.stop_all()
        controller.stop()
        http.stop()
