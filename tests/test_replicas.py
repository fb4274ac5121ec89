"""Three replicas on one real Redis: one is SIGKILLed; every feed is still polled and every
escalation alerted exactly once."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Reply
from tests.stack import Stack, make_stack, rss, wait_for

pytestmark = pytest.mark.timeout(180)

FEEDS = 50
REPLICAS = 3
# Separate stories: no two share a region, so the story grouping cannot merge them, and
# their (first region, top signal) cooldown keys differ.
BEFORE = {
    7: ("tyre-1", "Israeli air strikes hit Hezbollah positions near Tyre in southern Lebanon",
        "Israeli warplanes struck Hezbollah positions near the city of Tyre in southern Lebanon "
        "overnight, the army said, as cross-border fire intensified."),
    23: ("asad-1", "Rocket barrage targets US troops at Ain al-Asad air base in Iraq",
         "Militias fired a barrage of rockets at the Ain al-Asad air base in western Iraq "
         "hosting US forces, security sources said."),
}
AFTER = {
    11: ("hodeidah-1", "Houthi missile strikes tanker in the Red Sea off Hodeidah",
         "A Houthi anti-ship missile hit a commercial tanker in the Red Sea off the Yemeni port "
         "of Hodeidah, setting it ablaze, maritime security officials said."),
    31: ("damascus-1", "Air strikes hit militia weapons depots near Damascus in Syria",
         "Air strikes destroyed weapons depots of armed militias near Damascus airport in "
         "Syria, a war monitor said."),
    42: ("jordan-1", "Drone attack on Jordan border outpost kills US soldiers",
         "A drone attack on a US outpost in north-eastern Jordan killed three American "
         "soldiers, officials said."),
    3: ("sinai-1", "Rocket from Gaza slams into Egypt's Sinai near the Rafah crossing",
        "A rocket fired during the fighting struck a village in Egypt's North Sinai, wounding "
        "Egyptian border guards, officials said."),
}


def _quiet(i: int) -> tuple[str, str, str]:
    return (f"fair-{i}", f"Trade fair number {i} opens with farm machinery on show",
            "Exhibitors showed tractors, seeds and textiles to visitors on the first day.")


def _items(i: int, extra: dict[int, tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [_quiet(i), *([extra[i]] if i in extra else [])]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A loopback deployment (feeds, SMTP, Slack stand-in) in a temporary directory."""
    yield from make_stack(tmp_path)


def _polls(stack: Stack, index: int) -> int:
    """How many ``feed_polled`` events replica ``index`` logged."""
    return sum(1 for line in stack.log_of(index).splitlines()
               if line.startswith("{") and json.loads(line).get("event") == "feed_polled")


def _fetched(stack: Stack, since: int) -> set[str]:
    """Feed paths requested after the ``since``-th request the server saw."""
    return {r.path for r in stack.http.requests[since:] if r.path.startswith("/f")}


def _alert_mails(stack: Stack) -> Counter[str]:
    return Counter(str(m["X-Spillover-Alert"]) for m in stack.emails())


def test_replica_killed_mid_run_loses_and_repeats_nothing(stack: Stack, redis_url: str) -> None:
    """With three replicas on one Redis and 50 feeds, SIGKILLing the busiest replica
    leaves every feed polled again by the others and every escalation alerted exactly once,
    by email and Slack."""
    stack.set_feeds({f"f{i:02d}": rss(_items(i, BEFORE)) for i in range(FEEDS)})
    paths = {f"/f{i:02d}.xml" for i in range(FEEDS)}
    for n in range(REPLICAS):
        stack.start("run", "--config", "config", SPILLOVER_STATE_URL=redis_url,
                    SPILLOVER_REPLICA_ID=f"r{n}", SPILLOVER_LOG_FORMAT="json")
    assert wait_for(lambda: _fetched(stack, 0) >= paths and len(stack.emails()) >= len(BEFORE),
                    120), stack.log_of(0)[-3000:]

    counts = [_polls(stack, n) for n in range(REPLICAS)]
    victim = counts.index(max(counts))  # the one holding most feed leases
    stack.procs[victim].send_signal(signal.SIGKILL)
    stack.procs[victim].wait(10)
    killed_at = len(stack.http.requests)
    for i in AFTER:
        stack.http.routes[f"/f{i:02d}.xml"] = Reply(
            200, rss(_items(i, {**BEFORE, **AFTER})), {"Content-Type": "application/xml"})

    stories = len(BEFORE) + len(AFTER)
    assert wait_for(lambda: _fetched(stack, killed_at) >= paths
                    and len(_alert_mails(stack)) >= stories, 90), (
        sorted(paths - _fetched(stack, killed_at)), _alert_mails(stack))
    wait_for(lambda: False, 2)  # time for a duplicate, were one coming, to arrive
    mails = _alert_mails(stack)
    assert len(mails) == stories and set(mails.values()) == {1}, mails
    assert {key.split()[1] for key in mails} == {"v1"}
    ids = [str(m["Message-ID"]) for m in stack.emails()]
    assert len(ids) == len(set(ids)) == stories
    subjects = " ".join(str(m["Subject"]) for m in stack.emails())
    for _guid, title, _ in (*BEFORE.values(), *AFTER.values()):
        assert title.split(" in ")[0][:30] in subjects, title
    assert len(stack.slack_posts()) == stories
    survivors = [p for n, p in enumerate(stack.procs) if n != victim]
    assert all(p.poll() is None for p in survivors)
    assert counts[victim] >= FEEDS // REPLICAS, counts
