"""Wiring and lifecycle: start order, signals, live reload, drain, shutdown summary."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from monitor import metrics, notify
from monitor.analysis.classify import Classifier, Head, default_head_path
from monitor.analysis.encoder import load_encoder
from monitor.analysis.match import Matcher
from monitor.analyze import Analyzer, Judge
from monitor.channels import build_channel
from monitor.channels.base import Channel
from monitor.clock import Clock, SystemClock
from monitor.config import Config, load_config
from monitor.dispatch import Dispatcher
from monitor.errors import ConfigError, MonitorError
from monitor.feeds.fetch import Fetcher
from monitor.feeds.worker import ParserPool
from monitor.health import HealthServer
from monitor.models import Alert, Severity
from monitor.poll import Poller, PollOutcome
from monitor.render import Renderer
from monitor.schedule import PollSchedule, sleep_until_stopped
from monitor.settings import Settings
from monitor.state import open_store
from monitor.state.base import Store
from monitor.stories import StoryBook

log = structlog.get_logger(__name__)

HOUSEKEEPING_SECONDS = 5.0  # outbox gauges, dead-letter notices; watchdog pings at least this often
NOTICE_MEMORY = 7 * 24 * 3600.0  # a dead letter is told to the operator once a week at most
# A channel replaced by a reload is closed this much later: longer than any send may take
# (Slack timeout <= 120 s, SMTP <= 300 s), so a send in flight finishes on the old one.
RETIRE_SECONDS = 330.0


def replica_name(settings: Settings) -> str:
    """The name of this process among replicas: the setting, else the host name.

    Stable across restarts on purpose: a restarted replica takes its own unfinished queue
    entries back at once. Two processes on one host need distinct SPILLOVER_REPLICA_ID.
    """
    return settings.replica_id or socket.gethostname()


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
        self.reload_problem = ""
        self._retired: list[tuple[float, Channel]] = []

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
        self.channels: dict[str, Channel] = {c.name: build_channel(c, self.renderer)
                                              for c in self.config.enabled_channels()}
        stack.push_async_callback(self._close_channels)
        self.dispatcher = Dispatcher(self.store, self.channels, clock=self.clock, owner=self.owner)
        self.poller = Poller(self.store, self.fetcher, self.parser, self.clock, self.owner)
        self.analyzer = Analyzer(self.store, self.judge, StoryBook(self.store, self.clock),
                                 self.dispatcher, self.owner)
        await self.analyzer.recover()
        released = await self.store.outbox_release(self.owner)
        if released:  # a previous life of this replica was sending these: retry them now
            log.warning("outbox_recovered", deliveries=released, replica=self.owner)
        log.info("ready", replica=self.owner, feeds=len(self.config.feeds),
                 channels=sorted(self.channels), state=_state_kind(self.settings))
        operator = self.settings.operator_channel
        if operator and operator not in self.channels:
            log.warning("operator_channel_unknown", channel=operator,
                        enabled=sorted(self.channels),
                        hint="set SPILLOVER_OPERATOR_CHANNEL to an enabled channel's name")

    def judge(self) -> Judge:
        """The current judge (replaced atomically on config reload)."""
        if self._judge is None:
            raise RuntimeError("Runtime.judge() called before open()")
        return self._judge

    def _ready(self, check: str, ok: bool) -> None:
        if self.health:
            self.health.set_ready(check, ok)
            metrics.set_ready(self.health.is_ready())

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
        """Validate config/ and alerts/ as a whole and swap them in atomically.

        On failure the previous configuration stays and ``reload_problem`` says why.
        """
        try:
            config = load_config(self.config_dir)
            renderer = Renderer(self.alerts_dir)
        except ConfigError as exc:
            metrics.record_reload("failed")
            for problem in exc.problems:
                log.error("config_invalid", file=problem.file, location=problem.location,
                          problem=problem.message, hint=problem.hint,
                          kept="the previous configuration stays in force")
            self.reload_problem = f"configuration not reloaded, the previous one runs on:\n{exc}"
            return False
        old = self.config
        if _drops_most(len(old.feeds), len(config.feeds)) or _drops_most(
                len(old.watchlists), len(config.watchlists)):
            metrics.record_reload("refused")
            log.warning("config_reload_refused", feeds=(len(old.feeds), len(config.feeds)),
                        watchlists=(len(old.watchlists), len(config.watchlists)),
                        hint="a reload may not drop most feeds or watch-lists at once; "
                             "restart to apply such a change")
            self.reload_problem = (
                f"configuration reload refused: feeds {len(old.feeds)} -> {len(config.feeds)}, "
                f"watch-lists {len(old.watchlists)} -> {len(config.watchlists)}; "
                "restart to apply a change that drops most of them")
            return False
        changed = self._swap_channels(config, renderer)
        self.config, self.renderer = config, renderer
        for channel in self.channels.values():
            channel.use_renderer(renderer)
        self._judge = Judge(
            Classifier(self.classifier.encoder, config.signals, self.classifier.head),
            Matcher(config), config)
        metrics.record_reload("ok")
        self.reload_problem = ""
        log.info("config_reloaded", feeds=len(config.feeds), watchlists=len(config.watchlists),
                 channels_changed=changed)
        return True

    def _swap_channels(self, config: Config, renderer: Renderer) -> list[str]:
        """Rebuild channels whose settings changed, in place (the dispatcher shares the dict).

        A replaced or removed channel is retired, not closed: a send in flight finishes.
        Returns the names of channels added, changed or removed.
        """
        before = {c.name: c for c in self.config.enabled_channels()}
        after = {c.name: c for c in config.enabled_channels()}
        changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        fresh = {name: build_channel(after[name], renderer) for name in changed if name in after}
        for name in changed:
            old = self.channels.pop(name, None)
            if old is not None:
                self._retired.append((time.monotonic(), old))
        self.channels.update(fresh)
        return changed

    async def close_retired(self, *, everything: bool = False) -> None:
        """Close channels retired by a reload more than RETIRE_SECONDS ago (or all of them)."""
        cutoff = time.monotonic() - (0.0 if everything else RETIRE_SECONDS)
        due = [ch for at, ch in self._retired if everything or at <= cutoff]
        self._retired = [(at, ch) for at, ch in self._retired if not (everything or at <= cutoff)]
        for channel in due:
            await channel.close()

    async def _close_channels(self) -> None:
        for channel in list(self.channels.values()):
            await channel.close()
        await self.close_retired(everything=True)

    async def tell_operator(self, title: str, text: str) -> None:
        """Send a plain notice to SPILLOVER_OPERATOR_CHANNEL, if set; never raises."""
        name = self.settings.operator_channel
        channel = self.channels.get(name) if name else None
        if channel is None:
            return
        notice = operator_notice(title, text, self.clock)
        for recipient in channel.recipients():
            try:
                await channel.send(notice, recipient, idempotency_key=f"{notice.id}:{recipient}")
            except MonitorError as exc:
                log.warning("operator_notice_failed", channel=name, error=str(exc))
            else:
                log.info("operator_notified", channel=name, title=title)


def operator_notice(title: str, text: str, clock: Clock) -> Alert:
    """A plain notice for the operator's channel, rendered like an informational alert."""
    now = clock.now()
    digest = hashlib.sha256(f"{title}\0{text}\0{now.isoformat()}".encode()).hexdigest()
    return Alert(id=f"notice-{digest[:16]}", watchlist="spillover-operator",
                 severity=Severity.INFO, title=f"Spillover: {title}", summary=text[:2000],
                 reason="operator notice from Spillover itself, not a news alert",
                 created=now)


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
        asyncio.create_task(_housekeeping(rt), name="housekeeping"),
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
        else:
            await rt.tell_operator("configuration problem", rt.reload_problem)


async def _housekeeping(rt: Runtime) -> None:
    """Watchdog pings, outbox and feed gauges, dead-letter notices, every few seconds."""
    watchdog = notify.watchdog_interval()
    every = min(HOUSEKEEPING_SECONDS, watchdog) if watchdog else HOUSEKEEPING_SECONDS
    while True:
        if watchdog:
            notify.notify_watchdog()
        try:
            await rt.close_retired()
            await _publish_figures(rt)
        except MonitorError as exc:  # the store is down: the loops report it; keep pinging
            log.warning("housekeeping_failed", error=str(exc))
        if await sleep_until_stopped(rt.stop, every):
            return


async def _publish_figures(rt: Runtime) -> None:
    """Read the outbox and feed states from the store into the Prometheus gauges."""
    now = rt.clock.now()
    pending = await rt.store.outbox_list("pending")
    dead = await rt.store.outbox_list("dead")
    oldest = min((d.alert.created for d in pending), default=now)
    metrics.set_outbox(len(pending), (now - oldest).total_seconds(), len(dead))
    urls = {f.url for f in rt.config.feeds}
    gone = sum(1 for s in await rt.store.all_feed_states() if s.url in urls and not s.active)
    metrics.set_feeds(len(urls) - gone, gone)
    if rt.settings.operator_channel:
        for d in dead:
            # Shared marker: of several replicas, one tells the operator, once.
            if await rt.store.try_cooldown(f"notice:dead:{d.id}", NOTICE_MEMORY):
                await rt.tell_operator(
                    "alert dead-lettered",
                    f"delivery {d.id} ({d.channel}:{d.recipient or '-'}) of alert "
                    f"{d.alert.id} v{d.alert.version} \"{d.alert.title}\" gave up after "
                    f"{d.attempts} attempt(s): {d.last_error}\n"
                    f"fix the cause, then `spillover outbox retry {d.id}`")


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
