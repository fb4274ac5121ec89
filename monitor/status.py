"""Operator views and actions on the state: `status`, `outbox list|retry`, `test-alert`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.clock import SystemClock
from monitor.errors import MonitorError
from monitor.settings import Settings
from monitor.state import open_store

if TYPE_CHECKING:
    from monitor.config import FeedConfig
    from monitor.models import Delivery, FeedState


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    secs = int((now - when).total_seconds())
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


async def print_status(settings: Settings, config_dir: Path) -> int:
    """Feed health table, outbox counts and oldest pending, dead letters, last alerts."""
    from monitor.config import load_config

    config = load_config(config_dir)
    store = open_store(settings.state_location)
    await store.open()
    try:
        now = datetime.now(UTC)
        states = {s.url: s for s in await store.all_feed_states()}
        _print_feeds(config.feeds, states, now)
        _print_outbox(await store.outbox_list(), now)
        alerts = await store.recent_alerts(now - timedelta(days=7))
        sent = [a for a, _ in alerts if a.version > 0]
        print(f"\nlast alerts ({len(sent)} in 7 days, newest first):")
        for alert in sorted(sent, key=lambda a: a.created, reverse=True)[:10]:
            print(f"  {alert.created:%Y-%m-%d %H:%M} {alert.severity.value:8} v{alert.version} "
                  f"{len(alert.sources)} src  {alert.title[:80]}")
    finally:
        await store.close()
    return 0


def _print_feeds(feeds: Sequence[FeedConfig], states: dict[str, FeedState],
                 now: datetime) -> None:
    print(f"{'feed':28} {'state':9} {'last poll':11} {'last ok':11} {'fails':>5}  last error")
    for feed in feeds:
        st = states.get(feed.url)
        if st is None:
            print(f"{feed.name[:28]:28} {'new':9} {'never':11} {'never':11} {0:5d}")
            continue
        state = "gone" if not st.active else ("failing" if st.failures else "ok")
        print(f"{feed.name[:28]:28} {state:9} {_ago(st.last_polled, now):11} "
              f"{_ago(st.last_ok, now):11} {st.failures:5d}  {st.last_error[:60]}")


def _print_outbox(deliveries: Sequence[Delivery], now: datetime) -> None:
    counts = Counter(d.status.value for d in deliveries)
    pending = [d for d in deliveries if d.status.value == "pending"]
    oldest = min((d.alert.created for d in pending), default=None)
    print(f"\noutbox: {counts.get('pending', 0)} pending (oldest {_ago(oldest, now)}), "
          f"{counts.get('done', 0)} delivered, {counts.get('dead', 0)} dead-lettered")
    dead = [d for d in deliveries if d.status.value == "dead"]
    for d in dead[:5]:
        print(f"  dead {d.id}  {d.channel}:{d.recipient or '-'}  {d.last_error[:70]}")
    if dead:
        print("  fix the cause, then `spillover outbox retry ID` (`spillover outbox list "
              "--status dead` lists all)")


async def outbox_list(settings: Settings, status: str | None) -> int:
    """One line per delivery."""
    store = open_store(settings.state_location)
    await store.open()
    try:
        for d in await store.outbox_list(status):
            print(f"{d.id}  {d.status.value:7} {d.channel}:{d.recipient or '-'} "
                  f"attempts={d.attempts} next={d.next_at:%Y-%m-%d %H:%M:%S} "
                  f"{d.last_error[:80]}")
    finally:
        await store.close()
    return 0


async def outbox_retry(settings: Settings, delivery_id: str) -> int:
    """Put one delivery back to be sent now by the running daemon (or the next run)."""
    store = open_store(settings.state_location)
    await store.open()
    try:
        if not await store.outbox_requeue(delivery_id, SystemClock().now()):
            raise MonitorError(f"no delivery with id {delivery_id!r}: see `spillover outbox list`")
        print(f"requeued {delivery_id}")
    finally:
        await store.close()
    return 0


async def send_test_alert(config_dir: Path, alerts_dir: Path, channel: str) -> int:
    """Render the founding article's sample alert and send it straight to one channel."""
    from monitor.channels import build_channel
    from monitor.config import load_config
    from monitor.models import Delivery
    from monitor.render import Renderer, sample_alert

    config = load_config(config_dir)
    cfg = next((c for c in config.enabled_channels() if c.name == channel), None)
    if cfg is None:
        names = ", ".join(c.name for c in config.enabled_channels()) or "none"
        raise MonitorError(f"channel {channel!r} is not enabled; enabled channels: {names} "
                           "(email needs SPILLOVER_SMTP_HOST, Slack SPILLOVER_SLACK_WEBHOOK_URL)")
    renderer = Renderer(alerts_dir)
    ch = build_channel(cfg, renderer)
    alert = sample_alert()
    try:
        for recipient in ch.recipients():
            await ch.send(alert, recipient,
                          idempotency_key=Delivery.key(alert, channel, recipient) + ":test")
            print(f"sent test alert to {channel}:{recipient or '-'}")
    finally:
        await ch.close()
    return 0
