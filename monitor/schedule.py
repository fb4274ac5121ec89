"""The poll schedule: the only module that imports APScheduler (3.x, AsyncIOScheduler)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = structlog.get_logger(__name__)

PollFn = Callable[[str], Awaitable[object]]


class PollSchedule:
    """One job per feed at its interval with jitter; one run per feed at a time; coalesced."""

    def __init__(self, poll: PollFn, *, jitter_fraction: float = 0.1) -> None:
        self._poll = poll
        self._jitter_fraction = jitter_fraction
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
        )
        self._intervals: dict[str, float] = {}

    @property
    def running(self) -> bool:
        """Whether the scheduler is started and not shut down."""
        return bool(self._scheduler.running)

    def start(self) -> None:
        """Start firing jobs (call from inside the running event loop)."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop firing new jobs; runs already in flight are the app's to drain."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def sync(self, feeds: Iterable[tuple[str, float]], *, first_run_now: bool = True) -> None:
        """Make the jobs match ``feeds`` (key, interval seconds): add, reschedule, remove."""
        wanted = dict(feeds)
        for key in list(self._intervals):
            if key not in wanted:
                self._scheduler.remove_job(key)
                del self._intervals[key]
        for key, interval in wanted.items():
            if self._intervals.get(key) == interval:
                continue
            trigger = IntervalTrigger(
                seconds=interval, jitter=max(1, int(interval * self._jitter_fraction))
            )
            if key in self._intervals:
                self._scheduler.reschedule_job(key, trigger=trigger)
            else:
                kwargs: dict[str, object] = {}
                if first_run_now:
                    kwargs["next_run_time"] = _soon()
                self._scheduler.add_job(
                    self._poll, trigger, args=[key], id=key, name=key, **kwargs
                )
            self._intervals[key] = interval
        log.info("schedule_synced", feeds=len(self._intervals))


def _soon() -> object:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def sleep_until_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
