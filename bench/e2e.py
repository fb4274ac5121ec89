"""End-to-end alert latency: an item appears in a loopback feed → its email arrives at aiosmtpd.

Usage: python bench/e2e.py [--items 200] [--spread 120] [--interval 30]

Runs the real daemon (`python -m monitor run`, SQLite state, the real model) against a
loopback feed server and aiosmtpd, wired like tests/stack.py. Every item is its own outlet
(feed ``o<i>``), so an item that the story grouping joins to an earlier one still produces
an email at once (a new outlet corroborates the story: version n+1 lists it). Items become
visible one after another over ``--spread`` seconds (several per poll interval), each a
distinct escalation report (region × event × place). The bench watch-list has no cooldown,
no corroboration threshold, no quiet hours and no digest, so every item is due at once.
Latency is from the moment an item became visible in its feed to the arrival of the first
email that lists its link; p50/p95 are printed with the target p95 ≤ interval + 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path

import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the loopback servers and env wiring live in tests/

from tests.channels.conftest import Recorder  # noqa: E402 - needs ROOT on sys.path
from tests.conftest import free_port  # noqa: E402 - needs ROOT on sys.path
from tests.servers import LoopbackHTTPServer, Reply  # noqa: E402 - needs ROOT on sys.path
from tests.stack import Stack, rss, wait_for  # noqa: E402 - needs ROOT on sys.path

# One gazetteer name per watched region ("the Gulf" alone is deliberately not one).
REGIONS = ["Israel", "Gaza", "the West Bank", "Lebanon", "Syria", "Iraq", "Iran", "Yemen",
           "the Red Sea", "Jordan", "Egypt", "Bahrain"]
EVENTS = [
    ("Ballistic missile strike hits {place} in {region}",
     "A ballistic missile struck {place} in {region} overnight, killing {n} people, officials "
     "said, as fears of a wider regional war grew."),
    ("Drone attack targets {place} in {region}",
     "A drone attack targeted {place} in {region} on Tuesday, wounding {n} soldiers, security "
     "sources said, in a sharp escalation of cross-border fire."),
    ("Ground offensive launched near {place} in {region}",
     "Troops and tanks began a ground offensive near {place} in {region}, with {n} killed in "
     "heavy fighting and artillery shelling, witnesses said."),
    ("Air strikes pound {place} in {region}",
     "Warplanes carried out air strikes on {place} in {region}, killing {n} people and "
     "destroying weapons depots, the military said, threatening a second front."),
    ("Cruise missile fired at {place} in {region}",
     "A cruise missile was fired at {place} in {region}; air defences intercepted part of the "
     "salvo but {n} were killed, officials said, raising fears of retaliation."),
]
PLACES = ["the port", "an air base", "the border crossing", "a military camp", "the airport",
          "a naval base", "an oil terminal", "the garrison", "a radar station", "the barracks"]
WATCHLIST = {
    "description": "bench: every escalation report in the region, at once",
    "regions": ["israel", "gaza", "west-bank", "lebanon", "syria", "iraq", "iran", "yemen",
                "red-sea", "jordan", "egypt", "gulf"],
    "min_score": 0.3, "require_region": True, "channels": ["email"],
    "keywords": ["ballistic missile", "drone attack", "ground offensive", "air strikes",
                 "cruise missile"],
    "cooldown": 0, "corroboration": 1, "digest": "none",
}
LINK = re.compile(r"news\.example\.org/(e2e-\d+)")


class TimedRecorder(Recorder):
    """aiosmtpd handler that also notes when each message arrived (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.arrivals.append(time.monotonic())
        return reply


def item(i: int) -> tuple[str, str, str]:
    """Item ``i``: (guid, title, description), a distinct escalation report."""
    title, body = EVENTS[i % len(EVENTS)]
    words = {"region": REGIONS[i % len(REGIONS)], "place": PLACES[(i // 12) % len(PLACES)],
             "n": str(3 + i)}
    return f"e2e-{i}", title.format(**words), body.format(**words)


def first_arrivals(smtp: TimedRecorder) -> dict[str, float]:
    """guid → arrival time of the first email listing that item's link."""
    seen: dict[str, float] = {}
    for received, arrived in zip(list(smtp.messages), list(smtp.arrivals), strict=False):
        msg = message_from_bytes(received.content, policy=policy.default)
        body = msg.get_body(preferencelist=("plain",))
        for guid in LINK.findall(body.get_content() if body else ""):
            seen.setdefault(guid, arrived)
    return seen


def configure(stack: Stack, items: int, interval: int) -> None:
    """One empty feed per outlet, and the bench watch-list as the only one."""
    stack.set_feeds({f"o{i}": rss([]) for i in range(items)})
    feeds = yaml.safe_load((stack.config / "feeds.yaml").read_text(encoding="utf-8"))
    for feed in feeds["feeds"]:
        feed["interval"] = interval
    (stack.config / "feeds.yaml").write_text(yaml.safe_dump(feeds), encoding="utf-8")
    for old in (stack.config / "watchlists").glob("*.yaml"):
        old.unlink()
    (stack.config / "watchlists" / "bench.yaml").write_text(yaml.safe_dump(WATCHLIST),
                                                            encoding="utf-8")


def publish(stack: Stack, items: int, spread: float) -> dict[str, float]:
    """Make item i visible in feed o<i>, evenly over ``spread`` seconds; return guid → time."""
    visible: dict[str, float] = {}
    start = time.monotonic()
    for i in range(items):
        time.sleep(max(0.0, start + i * spread / items - time.monotonic()))
        guid, title, body = item(i)
        stack.http.routes[f"/o{i}.xml"] = Reply(200, rss([(guid, title, body)]),
                                                {"Content-Type": "application/xml"})
        visible[guid] = time.monotonic()
    return visible


def report(visible: dict[str, float], arrived: dict[str, float], interval: int) -> None:
    """Print p50/p95 latency and the target."""
    latencies = sorted(arrived[g] - t for g, t in visible.items() if g in arrived)
    missing = len(visible) - len(latencies)
    print(f"items {len(visible)}, emails matched {len(latencies)}, missing {missing}")
    for guid in [g for g in visible if g not in arrived][:20]:
        print(f"  no email for {guid}: {item(int(guid.split('-')[1]))[1]!r}")
    if len(latencies) < 2:
        return
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p95 = cuts[49], cuts[94]
    target = interval + 2.0
    print(f"latency item visible → email arrived: p50 {p50:.1f} s, p95 {p95:.1f} s, "
          f"min {latencies[0]:.1f} s, max {latencies[-1]:.1f} s")
    print(f"target p95 ≤ poll interval + 2 s = {target:.0f} s: "
          f"{'met' if p95 <= target else 'NOT met'}")


def run(items: int, spread: float, interval: int) -> int:
    """Start the stack and the daemon, publish, wait for the emails, report."""
    with tempfile.TemporaryDirectory(prefix="spillover-e2e-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(ROOT / "config", workdir / "config",
                        ignore=shutil.ignore_patterns("schema"))
        shutil.copytree(ROOT / "alerts", workdir / "alerts")
        http = LoopbackHTTPServer()
        http.start()
        smtp = TimedRecorder()
        port = free_port()
        controller = Controller(smtp, hostname="127.0.0.1", port=port)
        controller.start()
        stack = Stack(workdir, http, smtp, port)
        try:
            return _measure(stack, smtp, items, spread, interval)
        finally:
            stack.stop_all()
            controller.stop()
            http.stop()


def _measure(stack: Stack, smtp: TimedRecorder, items: int, spread: float, interval: int) -> int:
    configure(stack, items, interval)
    started = time.monotonic()
    proc = stack.start("run", SPILLOVER_SLACK_WEBHOOK_URL="", SPILLOVER_LOG_FORMAT="json",
                       SPILLOVER_LOG_LEVEL="INFO")
    if not wait_for(lambda: '"event": "ready"' in stack.log_of(0), 300, 0.5):
        print("the daemon did not become ready:\n" + stack.log_of(0)[-3000:])
        return 1
    print(f"daemon ready in {time.monotonic() - started:.1f} s; publishing {items} items "
          f"over {spread:.0f} s (feed interval {interval} s)")
    visible = publish(stack, items, spread)
    wait_for(lambda: len(first_arrivals(smtp)) >= items, interval + 90, 0.5)
    report(visible, first_arrivals(smtp), interval)
    proc.terminate()
    with contextlib.suppress(Exception):
        proc.wait(60)
    summary = [ln for ln in stack.log_of(0).splitlines() if "shutdown_complete" in ln]
    print(summary[-1] if summary else "no shutdown_complete line")
    return 0


def main() -> int:
    """Parse arguments and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--spread", type=float, default=120.0,
                        help="seconds over which items appear (default: 4 × 30 s)")
    parser.add_argument("--interval", type=int, default=30,
                        help="feed poll interval; the config allows 30 s at least")
    args = parser.parse_args()
    return run(args.items, args.spread, args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
