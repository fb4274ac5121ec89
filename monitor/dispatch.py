"""The outbox dispatcher: sends due deliveries, retries with backoff, dead-letters the hopeless."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog

from monitor import metrics
from monitor.channels.base import Channel
from monitor.clock import Clock
from monitor.errors import DeliveryError, MonitorError, PermanentDeliveryError
from monitor.faults import crash_point
from monitor.models import Alert, Delivery
from monitor.state.base import Store

log = structlog.get_logger(__name__)


@dataclass
class DispatchSummary:
    """What one pass (or a drain) did; ``pending`` is what is left to send."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    pending: int = 0

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


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def expand_deliveries(
    alert: Alert, channels: Mapping[str, Channel], names: Iterable[str | _Named], clock: Clock
) -> list[Delivery]:
    """One Delivery per channel × recipient, keyed so a re-enqueue is a no-op in the outbox.

    ``names`` may hold channel names or channel configs (anything with a ``name``).
    """
    now = clock.now()
    out = []
    wanted = (n if isinstance(n, str) else n.name for n in names)
    for name in dict.fromkeys(wanted):  # keep order, drop duplicates
        channel = channels.get(name)
        if channel is None:
            log.error("alert_channel_unknown", channel=name, alert=alert.id,
                      hint="add the channel to config/channels or remove it from the watch-list")
            continue
        for recipient in channel.recipients():
            out.append(Delivery(id=Delivery.key(alert, name, recipient), alert=alert,
                                channel=name, recipient=recipient, next_at=now))
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

    def enqueue(self, alert: Alert, channel_names: Iterable[str | _Named]) -> list[Delivery]:
        """Expand an alert into its deliveries (the caller puts them in the outbox)."""
        return expand_deliveries(alert, self.channels, channel_names, self.clock)

    async def submit(self, alert: Alert, channel_names: Iterable[str | _Named]) -> int:
        """Expand, put into the outbox and wake the loop; return how many deliveries were new."""
        added = await self.store.outbox_put(self.enqueue(alert, channel_names))
        self._wake.set()
        return added

    async def run_once(self) -> DispatchSummary:
        """Claim one batch of due deliveries and try each once."""
        due = await self.store.outbox_due(self.clock.now(), self.owner, self.batch)
        summary = DispatchSummary()
        outcomes = await asyncio.gather(*(self._attempt(d) for d in due))
        for outcome in outcomes:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        return summary

    async def _attempt(self, delivery: Delivery) -> str:
        async with self._slots:
            channel = self.channels.get(delivery.channel)
            if channel is None:
                return await self._dead(delivery, f"channel {delivery.channel} is not configured")
            try:
                await channel.send(delivery.alert, delivery.recipient, idempotency_key=delivery.id)
            except PermanentDeliveryError as exc:
                metrics.record_alert(delivery.channel, "dead")
                return await self._dead(delivery, exc.reason)
            except DeliveryError as exc:
                metrics.record_alert(delivery.channel, "retry")
                return await self._retry(delivery, exc.reason, exc.retry_after)
            except Exception as exc:  # a bug in a channel must not stop the other deliveries
                log.exception("delivery_crashed", channel=delivery.channel, alert=delivery.alert.id)
                return await self._retry(delivery, f"unexpected {type(exc).__name__}", None)
        crash_point("after_send")
        await self.store.outbox_done(delivery.id)
        metrics.record_alert(delivery.channel, "sent")
        log.info("delivered", channel=delivery.channel, recipient=delivery.recipient,
                 alert=delivery.alert.id, version=delivery.alert.version,
                 attempt=delivery.attempts + 1)
        return "delivered"

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt: exponential, jittered, capped, >= Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(attempts - 1, 0))
        delay = ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        return max(delay, retry_after or 0.0)

    async def _retry(self, delivery: Delivery, reason: str, retry_after: float | None) -> str:
        attempts = delivery.attempts + 1
        if attempts >= self.max_attempts:
            return await self._dead(delivery, f"gave up after {attempts} attempts: {reason}")
        delay = self.backoff(attempts, retry_after)
        next_at = self.clock.now() + timedelta(seconds=delay)
        await self.store.outbox_retry(delivery.id, next_at, reason)
        log.warning("delivery_retry", channel=delivery.channel, recipient=delivery.recipient,
                    alert=delivery.alert.id, attempt=attempts, retry_in=round(delay, 1),
                    reason=reason)
        return "retried"

    async def _dead(self, delivery: Delivery, reason: str) -> str:
        await self.store.outbox_dead(delivery.id, reason)
        log.error("delivery_dead", channel=delivery.channel, recipient=delivery.recipient,
                  alert=delivery.alert.id, version=delivery.alert.version,
                  attempts=delivery.attempts + 1, reason=reason,
                  hint="fix the cause, then `spillover outbox retry ID`")
        return "dead"

    async def _next_wait(self) -> float | None:
        """Seconds until the earliest pending delivery is due (0 if overdue); None if none."""
        pending = await self.store.outbox_list("pending")
        if not pending:
            return None
        earliest = min(d.next_at for d in pending)
        return max((earliest - self.clock.now()).total_seconds(), 0.0)

    async def drain(self, deadline: float) -> DispatchSummary:
        """Send until nothing pending is due before ``deadline`` (a ``clock.monotonic()`` time)."""
        total = DispatchSummary()
        while self.clock.monotonic() < deadline:
            summary = await self.run_once()
            total.add(summary)
            if summary.attempted:
                continue
            wait = await self._next_wait()
            left = deadline - self.clock.monotonic()
            if wait is None or wait >= left:
                break
            # wait == 0: due but leased by another replica; poll instead of spinning.
            await asyncio.sleep(wait if wait > 0 else min(self.poll_interval, left))
        total.pending = len(await self.store.outbox_list("pending"))
        log.info("outbox_drained", delivered=total.delivered, retried=total.retried,
                 dead=total.dead, pending=total.pending)
        return total

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; when idle, poll every ``poll_interval`` or on submit."""
        while not stop.is_set():
            try:
                summary = await self.run_once()
            except MonitorError as exc:  # the store is down: keep the loop alive, try again
                log.warning("outbox_unavailable", error=str(exc))
                summary = DispatchSummary()
            if not summary.attempted:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait ``poll_interval`` seconds, less if stopped or woken by ``submit``."""
        self._wake.clear()
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
