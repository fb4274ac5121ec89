"""Stories: verdicts that fire a watch-list become alerts, grouped across outlets and languages.

The same story from several outlets, in English or Arabic, lands in one alert: a new
verdict joins the most similar recent alert of the same watch-list when they share a
region and one of their top two signals, and the encoder's cosine similarity is at least
``similarity``. (Raw e5 cosine alone cannot tell stories apart: two unrelated Arabic
news items score 0.85 to 0.89, the same story across English and Arabic 0.83 to 0.88.)
An alert is (re-)sent only when it is new, when its severity rises, or when a new outlet
corroborates it. A watch-list may ask for
N distinct outlets before the first send (``corroboration``); until then the story is kept
at version 0 (remembered, not sent). A cooldown per watch-list, region and top signal
stops a burst of separate stories from paging people again and again: a story held by it
stays at version 0 (a later report is checked again); critical stories pass through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import structlog

from monitor.models import Alert, Article, Severity, SignalScore, Source

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.state.base import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Firing:
    """One article that fired one watch-list, with everything needed to alert."""

    article: Article
    watchlist: str
    score: float
    signals: tuple[SignalScore, ...]
    regions: tuple[str, ...]
    keywords: tuple[str, ...]
    embedding: Sequence[float]
    weights: dict[str, float]
    corroboration: int = 1
    cooldown: float = 0.0


def severity_of(score: float, signals: Sequence[SignalScore], weights: dict[str, float],
                outlets: int) -> Severity:
    """Severity from the escalation probability, the top signal's weight and corroboration."""
    top_weight = max((weights.get(s.name, 1.0) for s in signals[:2]), default=1.0)
    points = score * top_weight + 0.1 * min(outlets - 1, 3)
    if points >= 1.3:
        return Severity.CRITICAL
    if points >= 0.75:
        return Severity.WARNING
    return Severity.INFO


def story_id(watchlist: str, article: Article) -> str:
    """A stable alert id: same watch-list and first article give the same id after a crash."""
    digest = hashlib.sha256(f"{watchlist}\0{article.id}".encode()).hexdigest()
    return f"{watchlist}-{digest[:16]}"


def _source(article: Article) -> Source:
    return Source(
        article_id=article.id, feed=article.feed, title=article.title, link=article.link,
        lang=article.lang or "en", published=article.published,
    )


class StoryBook:
    """Turns firings into alert versions to send, remembering stories in the Store."""

    def __init__(self, store: Store, clock: Clock, *, window: float = 24 * 3600,
                 similarity: float = 0.8) -> None:
        self._store = store
        self._clock = clock
        self._window = window
        self._similarity = similarity

    async def consider(self, firing: Firing) -> Alert | None:
        """The alert version to send for this firing, or None when nothing new is to say."""
        since = self._clock.now() - timedelta(seconds=self._window)
        match = await self._closest(firing, since)
        if match is None:
            return await self._new_story(firing)
        return await self._grow(match, firing)

    async def _closest(self, firing: Firing, since: object) -> tuple[Alert, list[float]] | None:
        vec = np.asarray(firing.embedding, dtype=np.float32)
        best: tuple[float, tuple[Alert, list[float]]] | None = None
        for alert, emb in await self._store.recent_alerts(since):  # type: ignore[arg-type]
            if alert.watchlist != firing.watchlist:
                continue
            if any(s.article_id == firing.article.id for s in alert.sources):
                return alert, emb
            if not _related(alert, firing):
                continue
            sim = float(np.dot(vec, np.asarray(emb, dtype=np.float32)))
            if sim >= self._similarity and (best is None or sim > best[0]):
                best = (sim, (alert, emb))
        return best[1] if best else None

    async def _new_story(self, firing: Firing) -> Alert | None:
        art = firing.article
        severity = severity_of(firing.score, firing.signals, firing.weights, 1)
        alert = Alert(
            id=story_id(firing.watchlist, art), version=0,
            watchlist=firing.watchlist, severity=severity, title=art.title,
            summary=art.summary[:600], lang=art.lang or "en", score=round(firing.score, 4),
            signals=firing.signals[:5], regions=firing.regions, keywords=firing.keywords,
            sources=(_source(art),), reason=_reason(firing), created=self._clock.now(),
        )
        ready = firing.corroboration <= 1 and await self._clear(alert, firing.cooldown)
        if ready:
            alert = alert.model_copy(update={"version": 1})
        await self._store.save_alert(alert, list(firing.embedding))
        return alert if ready else None

    async def _clear(self, alert: Alert, cooldown: float) -> bool:
        """Whether a story may be sent for the first time: critical, or no cooldown running.

        Starting the cooldown is part of the check, so two replicas cannot both pass it.
        """
        if cooldown <= 0 or alert.severity is Severity.CRITICAL:
            return True
        region = alert.regions[0] if alert.regions else "-"
        signal = alert.signals[0].name if alert.signals else "-"
        key = f"cooldown:{alert.watchlist}:{region}:{signal}"
        if await self._store.try_cooldown(key, cooldown):
            return True
        log.info("alert_in_cooldown", watchlist=alert.watchlist, alert=alert.id, key=key,
                 severity=alert.severity.value)
        return False

    async def _grow(self, match: tuple[Alert, list[float]], firing: Firing) -> Alert | None:
        alert, emb = match
        if any(s.article_id == firing.article.id for s in alert.sources):
            # Re-processing after a crash: the outbox put is idempotent, so hand it back.
            return alert if alert.version > 0 else None
        outlets = {s.feed for s in alert.sources}
        new_outlet = firing.article.feed not in outlets
        sources = (*alert.sources, _source(firing.article))
        n_outlets = len(outlets | {firing.article.feed})
        score = max(alert.score, round(firing.score, 4))
        severity = severity_of(score, alert.signals, firing.weights, n_outlets)
        if severity.rank < alert.severity.rank:
            severity = alert.severity
        rose = severity.rank > alert.severity.rank
        regions = tuple(dict.fromkeys((*alert.regions, *firing.regions)))
        keywords = tuple(dict.fromkeys((*alert.keywords, *firing.keywords)))
        unsent = alert.version == 0
        grown = alert.model_copy(update={
            "sources": sources, "severity": severity, "score": score, "regions": regions,
            "keywords": keywords,
        })
        if unsent:
            # Held for corroboration or by a cooldown: the first send passes both checks.
            send = n_outlets >= firing.corroboration and await self._clear(grown, firing.cooldown)
        else:
            send = rose or new_outlet
        if send:
            grown = grown.model_copy(update={"version": alert.version + 1})
        await self._store.save_alert(grown, emb)
        if send:
            log.info("story_updated" if not unsent else "story_corroborated", alert=alert.id,
                     version=grown.version, outlets=n_outlets, severity=severity.value)
        return grown if send else None


def _related(alert: Alert, firing: Firing) -> bool:
    """Same place and same kind of event: a shared region and a shared top-two signal."""
    if alert.regions and firing.regions and not set(alert.regions) & set(firing.regions):
        return False
    ours = {s.name for s in firing.signals[:2]}
    theirs = {s.name for s in alert.signals[:2]}
    return not (ours and theirs) or bool(ours & theirs)


def _reason(f: Firing) -> str:
    parts = [f"escalation probability {f.score:.2f}"]
    if f.signals:
        parts.append("signals " + ", ".join(f"{s.name} {s.score:.2f}" for s in f.signals[:3]))
    if f.regions:
        parts.append("regions " + ", ".join(f.regions[:6]))
    if f.keywords:
        parts.append("keywords " + ", ".join(f.keywords[:6]))
    return f"{f.watchlist}: " + "; ".join(parts)
