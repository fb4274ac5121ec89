"""The outbox dispatcher: sends due deliveries, retries with backoff, dead-letters the hopeless.

When to send is decided at enqueue time by the watch-list's ``Timing`` (monitor.timing):
critical alerts go at once; other alerts produced in quiet hours wait for the end of the quiet
period; info alerts of a watch-list with a digest wait for the end of the digest period and
carry a digest tag in their ``Delivery.id``. At send time every due pending delivery with the
same tag, channel and recipient goes out as ONE combined message. The outbox itself is the
durable digest (it survives restarts), and a lease per tag keeps replicas from sending a
digest twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import structlog

from monitor import metrics
from monitor.channels.base import Channel
from monitor.clock import Clock
from monitor.errors import DeliveryError, MonitorError, PermanentDeliveryError
from monitor.faults import crash_point
from monitor.models import Alert, Delivery
from monitor.state.base import Store
from monitor.timing import DIGEST_MARK, Timing, combine, digest_group, digest_tag

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)

DIGEST_LEASE = 120.0  # seconds one replica may take to send one digest


@dataclass
class DispatchSummary:
    """What one pass (or a drain) did; ``pending`` is what is left to send.

    ``deferred`` counts deliveries held back on purpose (quiet hours, digests): a drain
    does not wait for them; they are sent when due by this or a later run.
    """

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    pending: int = 0
    deferred: int = 0

    @property
    def attempted(self) -> int:
        """Deliveries tried in this pass or drain."""
        return self.delivered + self.retried + self.dead

    def add(self, other: DispatchSummary) -> None:
        """Accumulate another pass's counts (``pending`` is taken from the latest)."""
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead += other.dead
        self.pending = other.pending
        self.deferred = other.deferred


class _Named(Protocol):
    @property
    def name(self) -> str: ...


SEND_NOW = datetime(2000, 1, 1, tzinfo=UTC)


def expand_deliveries(
    alert: Alert, channels: Mapping[str, Channel], names: Iterable[str | _Named], clock: Clock,
    timing: Timing | None = None,
) -> list[Delivery]:
    """One Delivery per channel × recipient, keyed so a re-enqueue is a no-op in the outbox.

    ``names`` may hold channel names or channel configs (anything with a ``name``);
    ``timing`` (the watch-list's) may defer the send or put it in a digest.
    """
    now = clock.now()
    at, digest = (timing or Timing()).plan(alert.severity, now)
    suffix = f"{DIGEST_MARK}{at:%Y%m%dT%H%M%SZ}" if digest else ""
    if at <= now:
        # Due at once: stamp a fixed past time, so a wall clock that steps back (NTP, a VM
        # resumed) can never hold an alert until it catches up again.
        at = SEND_NOW
    out = []
    wanted = (n if isinstance(n, str) else n.name for n in names)
    for name in dict.fromkeys(wanted):  # keep order, drop duplicates
        channel = channels.get(name)
        if channel is None:
            log.error("alert_channel_unknown", channel=name, alert=alert.id,
                      hint="add the channel to config/channels or remove it from the watch-list")
            continue
        for recipient in channel.recipients():
            out.append(Delivery(id=Delivery.key(alert, name, recipient) + suffix, alert=alert,
                                channel=name, recipient=recipient, next_at=at))
    return out


class Dispatcher:
    """Claims due deliveries from the Store's outbox and sends them through their channels."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        *,
        clock: Clock,
        owner: str,
        max_attempts: int = 8,
        base_delay: float = 5.0,
        max_delay: float = 3600.0,
        batch: int = 32,
        concurrency: int = 8,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.channels = channels
        self.clock = clock
        self.owner = owner
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.batch = batch
        self.poll_interval = poll_interval
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()

    def enqueue(self, alert: Alert, channel_names: Iterable[str | _Named],
                timing: Timing | None = None) -> list[Delivery]:
        """Expand an alert into its deliveries (the caller puts them in the outbox)."""
        return expand_deliveries(alert, self.channels, channel_names, self.clock, timing)

    async def submit(self, alert: Alert, channel_names: Iterable[str | _Named],
                     timing: Timing | None = None) -> int:
        """Expand, put into the outbox and wake the loop; return how many deliveries were new."""
        added = await self.store.outbox_put(self.enqueue(alert, channel_names, timing))
        self.wake()
        return added

    def wake(self) -> None:
        """Look at the outbox now instead of after the idle wait (new deliveries were put)."""
        self._wake.set()

    async def run_once(self) -> DispatchSummary:
        """Claim one batch of due deliveries and try each once (each digest group once)."""
        due = await self.store.outbox_due(self.clock.now(), self.owner, self.batch)
        singles = await self._supersede([d for d in due if digest_tag(d.id) is None])
        groups = dict.fromkeys(g for d in due if (g := digest_group(d)) is not None)
        results = await asyncio.gather(*(self._attempt(d) for d in singles),
                                       *(self._attempt_digest(*g) for g in groups))
        summary = DispatchSummary()
        for outcome in (o for outcomes in results for o in outcomes):
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        return summary

    async def _supersede(self, due: list[Delivery]) -> list[Delivery]:
        """Drop a due version of an alert when a newer one for the same recipient is due too.

        Both versions were deferred (quiet hours) or one waited for a retry: the newer one
        says everything the older one did.
        """
        newest: dict[tuple[str, str, str], Delivery] = {}
        for d in due:
            key = (d.alert.id, d.channel, d.recipient)
            if key not in newest or d.alert.version > newest[key].alert.version:
                newest[key] = d
        keep = set(map(id, newest.values()))
        for d in due:
            if id(d) not in keep:
                await self.store.outbox_done(d.id)
                log.info("delivery_superseded", channel=d.channel, recipient=d.recipient,
                         alert=d.alert.id, version=d.alert.version)
        return [d for d in due if id(d) in keep]

    async def _attempt(self, delivery: Delivery) -> list[str]:
        channel = self.channels.get(delivery.channel)
        if channel is None:
            return await self._dead([delivery], delivery.alert,
                                    f"channel {delivery.channel} is not configured")
        return await self._deliver(channel, [delivery], delivery.alert, delivery.id)

    async def _attempt_digest(self, tag: str, channel_name: str, recipient: str) -> list[str]:
        """Send every due delivery of one digest group as one message, under a lease."""
        lease = f"digest:{tag}:{channel_name}:{recipient}"
        if not await self.store.acquire_lease(lease, self.owner, DIGEST_LEASE):
            return []  # another replica is sending this digest right now
        try:
            now = self.clock.now()
            # Read the outbox again: another replica may have sent part of it already, and
            # members may sit outside the batch this pass claimed.
            members = [d for d in await self.store.outbox_list("pending")
                       if digest_group(d) == (tag, channel_name, recipient) and d.next_at <= now]
            if not members:
                return []
            digest = combine(members, now)
            channel = self.channels.get(channel_name)
            if channel is None:
                return await self._dead(members, digest,
                                        f"channel {channel_name} is not configured")
            key = f"{digest.id}:{channel_name}:{recipient}"
            return await self._deliver(channel, members, digest, key)
        finally:
            await self.store.release_lease(lease, self.owner)

    async def _deliver(self, channel: Channel, members: list[Delivery], alert: Alert,
                       key: str) -> list[str]:
        """Send ``alert`` once for ``members`` (one delivery, or a digest's) and record it."""
        head = members[0]
        async with self._slots:
            try:
                await channel.send(alert, head.recipient, idempotency_key=key)
            except PermanentDeliveryError as exc:
                metrics.record_alert(head.channel, "dead")
                return await self._dead(members, alert, exc.reason)
            except DeliveryError as exc:
                metrics.record_alert(head.channel, "retry")
                return await self._retry(members, alert, exc.reason, exc.retry_after)
            except Exception as exc:  # a bug in a channel must not stop the other deliveries
                log.exception("delivery_crashed", channel=head.channel, alert=alert.id)
                return await self._retry(members, alert, f"unexpected {type(exc).__name__}", None)
        crash_point("after_send")
        for d in members:
            await self.store.outbox_done(d.id)
        metrics.record_alert(head.channel, "sent")
        log.info("delivered", channel=head.channel, recipient=head.recipient, alert=alert.id,
                 version=alert.version, attempt=max(d.attempts for d in members) + 1,
                 items=len(members))
        return ["delivered"] * len(members)

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt: exponential, jittered, capped, >= Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(attempts - 1, 0))
        delay = ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        return max(delay, retry_after or 0.0)

    async def _retry(self, members: list[Delivery], alert: Alert, reason: str,
                     retry_after: float | None) -> list[str]:
        attempts = max(d.attempts for d in members) + 1
        if attempts >= self.max_attempts:
            return await self._dead(members, alert, f"gave up after {attempts} attempts: {reason}")
        delay = self.backoff(attempts, retry_after)
        next_at = self.clock.now() + timedelta(seconds=delay)
        for d in members:  # one next_at: a digest's members stay together
            await self.store.outbox_retry(d.id, next_at, reason)
        log.warning("delivery_retry", channel=members[0].channel, recipient=members[0].recipient,
                    alert=alert.id, attempt=attempts, retry_in=round(delay, 1), reason=reason,
                    items=len(members))
        return ["retried"] * len(members)

    async def _dead(self, members: list[Delivery], alert: Alert, reason: str) -> list[str]:
        for d in members:
            await self.store.outbox_dead(d.id, reason)
        log.error("delivery_dead", channel=members[0].channel, recipient=members[0].recipient,
                  alert=alert.id, version=alert.version,
                  attempts=max(d.attempts for d in members) + 1, reason=reason,
                  items=len(members), hint="fix the cause, then `spillover outbox retry ID`")
        return ["dead"] * len(members)

    async def _outlook(self) -> tuple[float | None, int, int]:
        """(seconds until the earliest pending delivery a drain waits for, pending, deferred).

        Deliveries never attempted and due later were deferred on purpose (quiet hours,
        digests); a drain does not wait for them.
        """
        now = self.clock.now()
        pending = await self.store.outbox_list("pending")
        waiting = [d for d in pending if d.attempts > 0 or d.next_at <= now]
        deferred = len(pending) - len(waiting)
        if not waiting:
            return None, 0, deferred
        earliest = min(d.next_at for d in waiting)
        return max((earliest - now).total_seconds(), 0.0), len(waiting), deferred

    async def drain(self, deadline: float) -> DispatchSummary:
        """Send until nothing pending is due before ``deadline`` (a ``clock.monotonic()`` time)."""
        total = DispatchSummary()
        while self.clock.monotonic() < deadline:
            summary = await self.run_once()
            total.add(summary)
            if summary.attempted:
                continue
            wait, _, _ = await self._outlook()
            left = deadline - self.clock.monotonic()
            if wait is None or wait >= left:
                break
            # wait == 0: due but leased by another replica; poll instead of spinning.
            await asyncio.sleep(wait if wait > 0 else min(self.poll_interval, left))
        _, total.pending, total.deferred = await self._outlook()
        log.info("outbox_drained", delivered=total.delivered, retried=total.retried,
                 dead=total.dead, pending=total.pending, deferred=total.deferred)
        return total

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; when idle, poll every ``poll_interval`` or on submit."""
        while not stop.is_set():
            # Cleared before the pass, not in _idle: a wake during the pass is not lost.
            self._wake.clear()
            try:
                summary = await self.run_once()
            except MonitorError as exc:  # the store is down: keep the loop alive, try again
                log.warning("outbox_unavailable", error=str(exc))
                summary = DispatchSummary()
            if not summary.attempted:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait ``poll_interval`` seconds, less if stopped or woken by ``submit``."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
