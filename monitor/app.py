"""Wiring and lifecycle: start order, signals, live reload, drain, shutdown summary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from monitor import notify
from monitor.analysis.classify import Classifier, Head, default_head_path
from monitor.analysis.encoder import load_encoder
from monitor.analysis.match import Matcher
from monitor.analyze import Analyzer, Judge
from monitor.channels import build_channel
from monitor.clock import Clock, SystemClock
from monitor.config import Config, load_config
from monitor.dispatch import Dispatcher
from monitor.errors import ConfigError, MonitorError
from monitor.feeds.fetch import Fetcher
from monitor.feeds.worker import ParserPool
from monitor.health import HealthServer
from monitor.poll import Poller, PollOutcome
from monitor.render import Renderer
from monitor.schedule import PollSchedule
from monitor.settings import Settings
from monitor.state import open_store
from monitor.state.base import Store
from monitor.stories import StoryBook

log = structlog.get_logger(__name__)


def replica_name(settings: Settings) -> str:
    """The name of this process among replicas: the setting, else host-pid."""
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Tally:
    """Counts for the one summary line at exit."""

    polls: int = 0
    poll_errors: int = 0
    started: float = field(default_factory=time.monotonic)


class Runtime:
    """Everything a running Spillover holds, opened in order on an AsyncExitStack."""

    def __init__(self, settings: Settings, config_dir: Path, alerts_dir: Path,
                 *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.alerts_dir = alerts_dir
        self.clock: Clock = clock or SystemClock()
        self.owner = replica_name(settings)
        self.config: Config = load_config(config_dir)
        self.renderer = Renderer(alerts_dir)
        self.tally = Tally()
        self.stop = asyncio.Event()
        self._judge: Judge | None = None

    async def open(self, stack: AsyncExitStack) -> None:
        """Open state, health, HTTP, parser pool, model, channels: in that order."""
        self.health = HealthServer.from_settings(
            self.settings, required=("store", "model", "scheduler"))
        if self.health:
            self.health.start()
            stack.callback(self.health.stop)
        self.store: Store = open_store(self.settings.state_location)
        await self.store.open()
        stack.push_async_callback(self.store.close)
        self._ready("store", True)
        self.fetcher = await stack.enter_async_context(Fetcher(self.settings, clock=self.clock))
        self.parser = ParserPool()
        stack.callback(self.parser.close)
        await self.parser.warm_up()
        log.info("model_loading", model=self.settings.model, variant=self.settings.model_variant)
        encoder = await asyncio.to_thread(load_encoder, self.settings)
        stack.callback(encoder.close)
        self.classifier = Classifier(encoder, self.config.signals, Head.load(default_head_path()))
        self._judge = Judge(self.classifier, Matcher(self.config), self.config)
        self._ready("model", True)
        self.channels = {c.name: build_channel(c, self.renderer)
                         for c in self.config.enabled_channels()}
        for ch in self.channels.values():
            stack.push_async_callback(ch.close)
        self.dispatcher = Dispatcher(self.store, self.channels, clock=self.clock, owner=self.owner)
        self.poller = Poller(self.store, self.fetcher, self.parser, self.clock, self.owner)
        self.analyzer = Analyzer(self.store, self.judge, StoryBook(self.store, self.clock),
                                 self.dispatcher, self.owner)
        log.info("ready", replica=self.owner, feeds=len(self.config.feeds),
                 channels=sorted(self.channels), state=_state_kind(self.settings))

    def judge(self) -> Judge:
        """The current judge (replaced atomically on config reload)."""
        if self._judge is None:
            raise RuntimeError("Runtime.judge() called before open()")
        return self._judge

    def _ready(self, check: str, ok: bool) -> None:
        if self.health:
            self.health.set_ready(check, ok)

    async def poll_key(self, key: str, *, force: bool = False) -> PollOutcome | None:
        """Poll the feed whose URL is ``key``; never raises (one bad feed stops nothing)."""
        feed = next((f for f in self.config.feeds if f.url == key), None)
        if feed is None:
            return None
        try:
            outcome = await self.poller.poll(feed, force=force)
        except MonitorError as exc:
            log.error("poll_failed", feed=feed.name, error=str(exc))
            outcome = PollOutcome(feed.name, "error", error=str(exc))
        except Exception as exc:
            log.exception("poll_crashed", feed=feed.name, error=str(exc))
            outcome = PollOutcome(feed.name, "error", error=repr(exc))
        self.tally.polls += 1
        self.tally.poll_errors += outcome.status == "error"
        return outcome

    def reload(self) -> bool:
        """Validate config/ and alerts/ as a whole and swap them in atomically."""
        from monitor import metrics

        try:
            config = load_config(self.config_dir)
            renderer = Renderer(self.alerts_dir)
        except ConfigError as exc:
            metrics.RELOADS.labels(result="failed").inc()
            for problem in exc.problems:
                log.error("config_invalid", problem=str(problem),
                          hint="the previous configuration stays in force")
            return False
        old = self.config
        if _drops_most(len(old.feeds), len(config.feeds)) or _drops_most(
                len(old.watchlists), len(config.watchlists)):
            metrics.RELOADS.labels(result="refused").inc()
            log.warning("config_reload_refused", feeds=(len(old.feeds), len(config.feeds)),
                        watchlists=(len(old.watchlists), len(config.watchlists)),
                        hint="a reload may not drop most feeds or watch-lists at once; "
                             "restart to apply such a change")
            return False
        self.config, self.renderer = config, renderer
        self._judge = Judge(
            Classifier(self.classifier.encoder, config.signals, self.classifier.head),
            Matcher(config), config)
        metrics.RELOADS.labels(result="ok").inc()
        log.info("config_reloaded", feeds=len(config.feeds), watchlists=len(config.watchlists))
        return True


def _drops_most(before: int, after: int) -> bool:
    return before >= 4 and after < before / 2


def _state_kind(settings: Settings) -> str:
    return "redis" if settings.state_location.startswith(("redis", "unix")) else "sqlite"


async def run_once(rt: Runtime) -> int:
    """Poll every feed once, process all it fetched, deliver or dead-letter every alert."""
    outcomes = await asyncio.gather(*(rt.poll_key(f.url, force=True) for f in rt.config.feeds))
    deadline = time.monotonic() + 3600
    await rt.analyzer.drain(deadline)
    summary = await rt.dispatcher.drain(deadline)
    ran = [o for o in outcomes if o is not None and o.status != "error"]
    log.info("once_done", feeds=len(outcomes), ok=len(ran), errors=rt.tally.poll_errors,
             articles=rt.analyzer.articles_done, alerts=rt.analyzer.alerts_queued,
             delivery=str(summary))
    return 0 if ran or not outcomes else 1


async def run_daemon(rt: Runtime) -> int:
    """Run until SIGTERM/SIGINT; then stop scheduling, drain for a bounded time, summarise."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stop.set)
    schedule = PollSchedule(rt.poll_key)
    schedule.sync((f.url, float(f.interval)) for f in rt.config.feeds)
    schedule.start()
    rt._ready("scheduler", True)
    notify.notify_ready()
    tasks = [
        asyncio.create_task(rt.analyzer.run_forever(rt.stop), name="analyzer"),
        asyncio.create_task(rt.dispatcher.run_forever(rt.stop), name="dispatcher"),
        asyncio.create_task(_watch_config(rt, schedule), name="reload"),
    ]
    await rt.stop.wait()
    notify.notify_stopping()
    log.info("stopping", drain_seconds=rt.settings.drain_seconds)
    schedule.shutdown()
    rt._ready("scheduler", False)
    deadline = time.monotonic() + rt.settings.drain_seconds
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await rt.analyzer.drain(deadline)
    summary = await rt.dispatcher.drain(deadline)
    log.info("shutdown_complete", polls=rt.tally.polls, poll_errors=rt.tally.poll_errors,
             articles=rt.analyzer.articles_done, alerts=rt.analyzer.alerts_queued,
             delivery=str(summary), uptime=round(time.monotonic() - rt.tally.started, 1))
    return 0


async def _watch_config(rt: Runtime, schedule: PollSchedule) -> None:
    from watchfiles import awatch

    paths = [p for p in (rt.config_dir, rt.alerts_dir) if p.exists()]
    async for _changes in awatch(*paths, stop_event=rt.stop, debounce=400, step=100):
        if rt.reload():
            schedule.sync((f.url, float(f.interval)) for f in rt.config.feeds)


async def main(settings: Settings, config_dir: Path, alerts_dir: Path, *, once: bool,
               clock: Clock | None = None,
               hook: Callable[[Runtime], None] | None = None) -> int:
    """Open everything in order, run, and close in reverse order."""
    rt = Runtime(settings, config_dir, alerts_dir, clock=clock)
    async with AsyncExitStack() as stack:
        await rt.open(stack)
        if hook:
            hook(rt)
        with contextlib.suppress(asyncio.CancelledError):
            return await (run_once(rt) if once else run_daemon(rt))
    return 1
