"""Operating a daemon: readiness, metrics, operator notices, `status`, an evicting Redis."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import RedisServer, free_port
from tests.servers import Reply
from tests.stack import STRIKE, TANKER, Stack, make_stack, rss, wait_for

pytestmark = pytest.mark.timeout(180)

QUIET = ("bank-1", "Central bank keeps interest rates unchanged as inflation eases",
         "The central bank left its main rate on hold on Tuesday, citing slowing inflation.")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A loopback deployment (feeds, SMTP, Slack stand-in) in a temporary directory."""
    yield from make_stack(tmp_path)


def _get(url: str) -> tuple[int, str]:
    """Status and body of a GET; (0, error) when nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback test URL
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def _add_feed(stack: Stack, name: str, body: bytes) -> None:
    """Serve a new feed and append it to feeds.yaml (a live reload polls it at once)."""
    stack.http.routes[f"/{name}.xml"] = Reply(200, body, {"Content-Type": "application/xml"})
    path = stack.config / "feeds.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["feeds"].append({"url": stack.http.url(f"/{name}.xml"), "name": name, "interval": 30})
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")


def _datagrams(sock: socket.socket) -> list[str]:
    """Every notification waiting on the stand-in systemd socket."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_readiness_metrics_watchdog_and_operator_notice(stack: Stack, redis_url: str,
                                                        tmp_path: Path) -> None:
    """/readyz is 503 while the model loads and 200 after; systemd hears READY=1 and
    watchdog pings; /metrics counts polls, articles and sent alerts as they happen; a
    dead-lettered delivery is told once on the operator's channel and shows in the
    dead-letter gauge."""
    stack.set_feeds({"quiet": rss([QUIET]), "wire": rss([STRIKE])})
    stack.http.routes["/hook/T000/B000/secret-token"] = Reply(404, b"no_service")
    base = f"http://127.0.0.1:{free_port()}"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify.sock"))
    systemd.setblocking(False)
    stack.start("run", "--config", "config", SPILLOVER_STATE_URL=redis_url,
                SPILLOVER_HEALTH_LISTEN=base.removeprefix("http://"),
                SPILLOVER_OPERATOR_CHANNEL="email", SPILLOVER_LOG_FORMAT="json",
                NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000")
    seen: list[tuple[int, str]] = []

    def ready() -> bool:
        seen.append(_get(base + "/readyz"))
        return seen[-1][0] == 200

    assert wait_for(ready, 120, 0.1), stack.log_of(0)[-3000:]
    early = [json.loads(body) for code, body in seen if code == 503]
    assert early and "model" in early[0]["failing"], seen[:3]
    assert wait_for(lambda: len(stack.emails()) >= 2, 60), stack.log_of(0)[-3000:]
    before = _get(base + "/metrics")[1]
    assert _sample(before, "spillover_fetch_total", outcome="ok") >= 2
    assert _sample(before, "spillover_alerts_total", channel="email", outcome="sent") >= 1
    assert _sample(before, "spillover_alerts_total", channel="slack", outcome="dead") == 1
    assert _sample(before, "spillover_ready") == 1

    _add_feed(stack, "late", rss([TANKER]))
    assert wait_for(lambda: any("Hodeidah" in str(m["Subject"]) for m in stack.emails()), 60)
    after = ""

    def dead_gauge_moved() -> bool:
        nonlocal after
        after = _get(base + "/metrics")[1]
        return _sample(after, "spillover_dead_letters") == 2

    assert wait_for(dead_gauge_moved, 15, 0.5), after
    for name, labels in [("spillover_fetch_total", {"outcome": "ok"}),
                         ("spillover_articles_total", {"lang": "en"}),
                         ("spillover_alerts_total", {"channel": "email", "outcome": "sent"})]:
        assert _sample(after, name, **labels) > _sample(before, name, **labels), name
    assert _sample(after, "spillover_outbox_depth") == 0
    notices = [m for m in stack.emails() if "dead-lettered" in str(m["Subject"])]
    assert len(notices) == 2, [str(m["Subject"]) for m in stack.emails()]
    assert "secret-token" not in stack.log_of(0)
    told = _datagrams(systemd)
    systemd.close()
    assert told[0].startswith("READY=1"), told
    assert told.count("WATCHDOG=1") >= 3, told


def test_status_after_a_run_shows_feeds_outbox_and_alerts(stack: Stack, redis_url: str) -> None:
    """`spillover status` after `run --once` lists each feed's health (a broken feed as
    failing with its error), the outbox counts, the dead letter with the way to retry it,
    and the alert that was sent."""
    stack.set_feeds({"wire": rss([STRIKE, QUIET]),
                     "broken": b"<html><body>Checking your browser...</body></html>"})
    stack.http.routes["/hook/T000/B000/secret-token"] = Reply(404, b"no_service")
    done = stack.run("run", "--once", "--config", "config", SPILLOVER_STATE_URL=redis_url)
    assert done.returncode == 0, done.stderr[-3000:]
    status = stack.run("status", "--config", "config", SPILLOVER_STATE_URL=redis_url)
    assert status.returncode == 0, status.stderr[-3000:]
    lines = status.stdout.splitlines()
    wire = next(ln for ln in lines if ln.startswith("wire "))
    broken = next(ln for ln in lines if ln.startswith("broken "))
    assert " ok " in wire and "ago" in wire
    assert " failing " in broken and "HTML" in broken
    # the one alert: delivered to the console and by email, dead-lettered on Slack
    assert len(stack.emails()) == 1
    assert "0 pending" in status.stdout and "2 delivered, 1 dead-lettered" in status.stdout
    dead = next(ln for ln in lines if ln.strip().startswith("dead "))
    assert "slack:" in dead and "404" in dead and "outbox retry" in status.stdout
    assert "Tyre" in status.stdout and "Central bank" not in status.stdout
    assert "secret-token" not in status.stdout + status.stderr


def test_refuses_an_evicting_redis(stack: Stack, tmp_path: Path) -> None:
    """On a Redis whose maxmemory-policy evicts keys, `run` exits non-zero saying what to set."""
    stack.set_feeds({"wire": rss([STRIKE])})
    evicting = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru")
    try:
        done = stack.run("run", "--config", "config", SPILLOVER_STATE_URL=evicting.url,
                         timeout=60)
    finally:
        evicting.stop()
    assert done.returncode != 0
    assert "allkeys-lru" in done.stderr and "maxmemory-policy noeviction" in done.stderr
    assert "model_loading" not in done.stderr
    assert stack.emails() == []
