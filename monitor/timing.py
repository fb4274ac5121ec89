"""When a delivery may go: quiet hours, digest periods, and the one message a digest becomes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING

from monitor.models import Alert, Delivery, Severity, SignalScore

if TYPE_CHECKING:
    from monitor.config import QuietHours, Watchlist

DIGEST_MARK = "#digest@"
DAILY_DIGEST_AT = time(8, 0)
DIGEST_LINES = 50  # stories listed in a digest's summary; every source is still listed


@dataclass(frozen=True)
class Timing:
    """A watch-list's delivery timing: quiet hours and the period of its info digest."""

    quiet_hours: QuietHours | None = None
    digest: str = "none"

    @classmethod
    def of(cls, watchlist: Watchlist) -> Timing:
        """The timing a watch-list asks for."""
        return cls(watchlist.quiet_hours, watchlist.digest)

    @property
    def zone(self) -> tzinfo:
        """The watch-list's time zone: the quiet hours' zone, else UTC."""
        return self.quiet_hours.zone if self.quiet_hours else UTC

    def plan(self, severity: Severity, now: datetime) -> tuple[datetime, bool]:
        """When to send an alert of ``severity`` produced at ``now``, and whether in a digest."""
        if severity is Severity.CRITICAL:
            return now, False
        digest = severity is Severity.INFO and self.digest != "none"
        at = digest_due(self.digest, self.zone, now) if digest else now
        return quiet_end(self.quiet_hours, at) or at, digest


def _clock_time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _next_local(local: datetime, at: time) -> datetime:
    """The first moment after ``local`` whose wall-clock time (in its zone) is ``at``, in UTC."""
    candidate = datetime.combine(local.date(), at, tzinfo=local.tzinfo)
    if candidate <= local:  # same tzinfo: compares wall-clock times, as wanted
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=local.tzinfo)
    return candidate.astimezone(UTC)


def quiet_end(quiet: QuietHours | None, at: datetime) -> datetime | None:
    """The end of the quiet period ``at`` falls in (UTC), or None outside quiet hours.

    A window whose start is after its end crosses midnight (22:00-06:00); start == end is
    an empty window.
    """
    if quiet is None:
        return None
    start, end = _clock_time(quiet.start), _clock_time(quiet.end)
    local = at.astimezone(quiet.zone)
    now = local.time()
    inside = start <= now < end if start <= end else (now >= start or now < end)
    return _next_local(local, end) if inside else None


def digest_due(period: str, zone: tzinfo, now: datetime) -> datetime:
    """The end of the digest period ``now`` is in: the next full hour, or the next 08:00."""
    local = now.astimezone(zone)
    if period == "daily":
        return _next_local(local, DAILY_DIGEST_AT)
    top = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return top + timedelta(hours=1)


def digest_tag(delivery_id: str) -> str | None:
    """The digest period a delivery belongs to (its send time), or None if sent on its own."""
    _, mark, tag = delivery_id.rpartition(DIGEST_MARK)
    return tag if mark else None


def digest_group(delivery: Delivery) -> tuple[str, str, str] | None:
    tag = digest_tag(delivery.id)
    return None if tag is None else (tag, delivery.channel, delivery.recipient)


def combine(deliveries: Sequence[Delivery], now: datetime) -> Alert:
    """One info Alert listing every story (newest version of each) and every source."""
    newest: dict[str, Alert] = {}
    for d in sorted(deliveries, key=lambda d: (d.alert.created, d.alert.version)):
        newest[d.alert.id] = d.alert
    alerts = list(newest.values())
    best: dict[str, SignalScore] = {}
    for sig in (s for a in alerts for s in a.signals):
        if sig.name not in best or sig.score > best[sig.name].score:
            best[sig.name] = sig
    ids = "\n".join(sorted(d.id for d in deliveries))
    count = len(alerts)
    lines = [f"- {a.title} ({len(a.sources)} source{'s' * (len(a.sources) != 1)}, "
             f"score {a.score:.2f})" for a in alerts[:DIGEST_LINES]]
    if count > DIGEST_LINES:
        lines.append(f"... and {count - DIGEST_LINES} more")
    return Alert(
        id="digest-" + hashlib.sha256(ids.encode()).hexdigest()[:16], version=1,
        watchlist=", ".join(dict.fromkeys(a.watchlist for a in alerts)),
        severity=Severity.INFO, title=f"Digest: {count} alert{'s' * (count != 1)}",
        summary="\n".join(lines), lang="en", score=max(a.score for a in alerts),
        signals=tuple(sorted(best.values(), key=lambda s: -s.score)[:5]),
        regions=tuple(dict.fromkeys(r for a in alerts for r in a.regions)),
        keywords=tuple(dict.fromkeys(k for a in alerts for k in a.keywords))[:20],
        sources=tuple({s.article_id: s for a in alerts for s in a.sources}.values()),
        reason=f"{count} info-level alert{'s' * (count != 1)} collected since "
               f"{alerts[0].created:%Y-%m-%d %H:%M} UTC",
        created=now,
    )
