"""The analysis stage: queued articles → classifier → watch-lists → stories → outbox."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from monitor import metrics
from monitor.faults import crash_point
from monitor.models import Alert, Article, Verdict
from monitor.stories import Firing, StoryBook
from monitor.timing import Timing, digest_tag

if TYPE_CHECKING:
    from monitor.analysis.classify import Classifier
    from monitor.analysis.match import Matcher, WatchlistHit
    from monitor.config import Config
    from monitor.dispatch import Dispatcher
    from monitor.state.base import Store

log = structlog.get_logger(__name__)

CLASSIFIED_LANGS = ("en", "ar")
DEFAULT_WATCHLIST = "middle-east"


@dataclass(frozen=True)
class Judgement:
    """A verdict with the hits behind it and the story embedding."""

    verdict: Verdict
    hits: tuple[WatchlistHit, ...]
    embedding: Sequence[float]


@dataclass(frozen=True)
class Queued:
    """An alert version to deliver, with its watch-list's channels and timing."""

    alert: Alert
    channels: list[str]
    timing: Timing


class Judge:
    """Classifier plus watch-lists: a pure, blocking function of a batch of articles."""

    def __init__(self, classifier: Classifier, matcher: Matcher, config: Config) -> None:
        self.classifier = classifier
        self.matcher = matcher
        self.config = config
        names = [w.name for w in config.watchlists]
        # `escalation` in the classify contract means: the shipped default watch-list fires.
        self.default_watchlist = DEFAULT_WATCHLIST if DEFAULT_WATCHLIST in names else (
            names[0] if names else "")

    def judge(self, articles: Sequence[Article]) -> list[Judgement]:
        """Score, match and explain every article, in order."""
        langs = [a.lang or "other" for a in articles]
        texts = [a.text for a in articles]
        idx = [i for i, lang in enumerate(langs) if lang in CLASSIFIED_LANGS]
        scored = self.classifier.score([texts[i] for i in idx], [langs[i] for i in idx])
        by_index = dict(zip(idx, scored, strict=True))
        threshold = self.classifier.threshold
        out = []
        for i, art in enumerate(articles):
            s = by_index.get(i)
            regions = tuple(self.matcher.regions(texts[i]))
            if s is None:
                verdict = Verdict(article_id=art.id, lang=langs[i], score=0.0, escalation=False,
                                  regions=regions)
                out.append(Judgement(verdict, (), ()))
                continue
            hits = tuple(self.matcher.evaluate(texts[i], s.score, s.signals, threshold))
            keywords = tuple(dict.fromkeys(k for h in hits for k in h.keywords))
            default = self.default_watchlist
            verdict = Verdict(
                article_id=art.id, lang=langs[i], score=min(1.0, max(0.0, s.score)),
                escalation=any(h.watchlist == default for h in hits),
                signals=s.signals, regions=regions, keywords=keywords,
                watchlists=tuple(h.watchlist for h in hits),
            )
            out.append(Judgement(verdict, hits, [float(x) for x in s.embedding]))
        return out


class Analyzer:
    """Claims queued articles, judges them off the event loop, and queues alert deliveries."""

    def __init__(self, store: Store, judge: Callable[[], Judge], stories: StoryBook,
                 dispatcher: Dispatcher, consumer: str, *, batch: int = 32) -> None:
        self._store = store
        self._judge = judge
        self._stories = stories
        self._dispatcher = dispatcher
        self._consumer = consumer
        self._batch = batch
        self.alerts_queued = 0
        self.articles_done = 0
        self.judged: list[tuple[Article, Verdict]] = []
        self.record = False

    async def run_once(self) -> int:
        """Process one batch; return how many articles it took (0 when the queue is empty)."""
        entries = await self._store.claim_articles(self._consumer, self._batch)
        if not entries:
            return 0
        judge = self._judge()
        articles = [a for _, a in entries]
        started = time.perf_counter()
        judgements = await asyncio.to_thread(judge.judge, articles)
        metrics.CLASSIFY_SECONDS.observe(time.perf_counter() - started)
        crash_point("after_classify")
        # The newest version of each story in this batch: three outlets reporting one story
        # in the same poll give one alert listing three sources, not three messages.
        latest: dict[str, Queued] = {}
        for art, jd in zip(articles, judgements, strict=True):
            if self.record:
                self.judged.append((art, jd.verdict))
            for queued in await self._alerts(judge, jd, art):
                latest[queued.alert.id] = queued
        for queued in latest.values():
            await self._queue(queued)
        if latest:
            self._dispatcher.wake()
        crash_point("before_ack")
        await self._store.ack_articles([eid for eid, _ in entries])
        self.articles_done += len(entries)
        return len(entries)

    async def _alerts(
        self, judge: Judge, jd: Judgement, art: Article
    ) -> list[Queued]:
        for sig in jd.verdict.signals[:1]:
            metrics.VERDICTS.labels(signal=sig.name).inc()
        log.info("article_judged", feed=art.feed, lang=jd.verdict.lang,
                 score=round(jd.verdict.score, 3), title=art.title[:120],
                 watchlists=list(jd.verdict.watchlists))
        weights = {s.name: s.weight for s in judge.config.signals}
        out = []
        for hit in jd.hits:
            wl = judge.config.watchlist(hit.watchlist)
            firing = Firing(
                article=art, watchlist=hit.watchlist, score=hit.score, signals=hit.signals,
                regions=hit.regions, keywords=hit.keywords, embedding=jd.embedding,
                weights=weights, corroboration=wl.corroboration,
                cooldown=float(wl.cooldown),
            )
            alert = await self._stories.consider(firing)
            if alert is not None:
                out.append(Queued(alert, [c.name for c in judge.config.channels_for(wl)],
                                  Timing.of(wl)))
        return out

    async def _queue(self, queued: Queued) -> None:
        alert = queued.alert
        deliveries = self._dispatcher.enqueue(alert, queued.channels, queued.timing)
        added = await self._store.outbox_put(deliveries)
        self.alerts_queued += added
        send_at = min((d.next_at for d in deliveries), default=None)
        log.info("alert_queued", alert=alert.id, version=alert.version, sources=len(alert.sources),
                 severity=alert.severity.value, channels=queued.channels, deliveries=added,
                 send_at=send_at.isoformat() if send_at else None,
                 digest=any(digest_tag(d.id) for d in deliveries))

    async def recover(self) -> None:
        """Take back what a previous life of this replica claimed and never finished."""
        released = await self._store.release_claims(self._consumer)
        if released:
            log.warning("queue_recovered", entries=released, consumer=self._consumer,
                        hint="a previous run stopped mid-batch; its articles are processed now")

    async def drain(self, deadline: float) -> None:
        """Process until the queue is empty or the monotonic deadline passes."""
        while time.monotonic() < deadline:
            if await self.run_once() == 0:
                return

    async def run_forever(self, stop: asyncio.Event, idle: float = 0.25) -> None:
        """Process batches until ``stop`` is set; sleep briefly when the queue is empty.

        ``idle`` bounds how long a freshly admitted article waits (the poller does not wake
        this loop); a claim on an empty queue is one cheap query.
        """
        while not stop.is_set():
            try:
                n = await self.run_once()
            except Exception as exc:  # keep the stage alive; the entry is reclaimed later
                log.exception("analysis_failed", error=str(exc))
                n = 0
            if n == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle)


