"""Stories: severity, grouping across outlets and languages, corroboration, cooldowns, updates.

StoryBook runs on the real SQLiteStore; embeddings are synthetic unit vectors (grouping with
the real encoder across English and Arabic is pinned end to end in tests/test_app.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from monitor.models import Article, Severity, SignalScore
from monitor.state.sqlite import SQLiteStore
from monitor.stories import Firing, StoryBook, severity_of
from tests.clock import ManualClock

DIM = 8


def unit(*components: float) -> list[float]:
    """A unit vector from its first components: stories with similar vectors are one story."""
    vec = np.zeros(DIM, dtype=np.float64)
    vec[: len(components)] = components
    return [float(x) for x in vec / np.linalg.norm(vec)]


STORY = unit(1.0)
STORY_NEAR = unit(1.0, 0.3)  # cosine 0.96 with STORY: the same story, other words or language
OTHER = unit(0.0, 1.0)  # cosine 0: another event


def firing(article_id: str, feed: str, *, score: float = 0.6, embedding: Sequence[float] = STORY,
           signals: Sequence[tuple[str, float]] = (("strike", 0.9),),
           regions: Sequence[str] = ("iraq",), lang: str = "en",
           weights: dict[str, float] | None = None, corroboration: int = 1,
           cooldown: float = 0.0) -> Firing:
    """One article from ``feed`` firing the ``levant`` watch-list."""
    article = Article(id=article_id, feed=feed, feed_url=f"http://127.0.0.1/{feed}.xml",
                      title=f"report {article_id}", summary="", link=f"https://x.test/{article_id}",
                      lang=lang)
    return Firing(
        article=article, watchlist="levant", score=score,
        signals=tuple(SignalScore(name=n, score=s) for n, s in signals), regions=tuple(regions),
        keywords=(), embedding=embedding, weights=weights or {"strike": 1.0},
        corroboration=corroboration, cooldown=cooldown,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A fresh SQLite state file."""
    opened = SQLiteStore(tmp_path / "state.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves."""
    return ManualClock()


@pytest.fixture
def book(store: SQLiteStore, clock: ManualClock) -> StoryBook:
    """A StoryBook on the store with the shipped window and similarity."""
    return StoryBook(store, clock)


@pytest.mark.parametrize(("score", "weights", "outlets", "expected"), [
    (0.5, {}, 1, Severity.INFO),  # 0.5 points
    (0.8, {}, 1, Severity.WARNING),  # 0.8
    (0.7, {}, 1, Severity.INFO),  # 0.7 ...
    (0.7, {}, 2, Severity.WARNING),  # ... plus 0.1 for a second outlet
    (0.4, {}, 10, Severity.INFO),  # corroboration adds at most 0.3
    (0.7, {"strike": 2.0}, 1, Severity.CRITICAL),  # 1.4: a heavy signal
    (0.7, {"shelling": 2.0}, 1, Severity.CRITICAL),  # the second signal's weight counts too
    (0.7, {"protest": 5.0}, 1, Severity.INFO),  # the third signal's does not
    (0.6, {"strike": 2.0}, 1, Severity.WARNING),  # 1.2
    (0.6, {"strike": 2.0}, 2, Severity.CRITICAL),  # 1.3
])
def test_severity_from_score_weights_and_outlets(
        score: float, weights: dict[str, float], outlets: int, expected: Severity) -> None:
    """Severity is score × the heavier of the top two signals' weights + 0.1 per extra outlet."""
    signals = [SignalScore(name=n, score=s)
               for n, s in (("strike", 0.9), ("shelling", 0.5), ("protest", 0.4))]
    assert severity_of(score, signals, weights, outlets) is expected


async def test_one_story_from_outlets_in_both_languages_is_one_alert(
        book: StoryBook, store: SQLiteStore) -> None:
    """A second outlet's Arabic report of the same story updates the alert: v2, both sources."""
    first = await book.consider(firing("wire-1", "wire"))
    assert first is not None and first.version == 1 and first.severity is Severity.INFO
    second = await book.consider(firing("ar-1", "arabic", embedding=STORY_NEAR, lang="ar"))
    assert second is not None and second.id == first.id and second.version == 2
    assert [(s.feed, s.lang) for s in second.sources] == [("wire", "en"), ("arabic", "ar")]
    assert second.severity is Severity.INFO  # 0.6 + 0.1 for the second outlet
    [(stored, _)] = await store.recent_alerts(datetime.now(UTC) - timedelta(hours=1))
    assert stored == second


@pytest.mark.parametrize("change", [
    {"embedding": OTHER},  # another event in the same place
    {"regions": ("yemen",)},  # similar words, another place
    {"signals": (("protest", 0.9), ("evacuation", 0.8))},  # another kind of event
])
async def test_different_stories_are_not_grouped(
        book: StoryBook, change: dict[str, object]) -> None:
    """Low similarity, no shared region or no shared top-two signal: a separate alert."""
    first = await book.consider(firing("wire-1", "wire"))
    other = await book.consider(firing("daily-1", "daily", **change))  # type: ignore[arg-type]
    assert first is not None and other is not None
    assert other.id != first.id and other.version == 1 and len(other.sources) == 1


async def test_a_story_older_than_the_window_starts_a_new_alert(
        book: StoryBook, clock: ManualClock) -> None:
    """Grouping looks back 24 hours: the same story a day and more later is a new alert."""
    first = await book.consider(firing("wire-1", "wire"))
    clock.at += timedelta(hours=25)
    later = await book.consider(firing("daily-1", "daily"))
    assert first is not None and later is not None and later.id != first.id


async def test_cooldown_holds_a_second_story_but_not_a_critical_one(book: StoryBook) -> None:
    """Within the cooldown a new story on the same region and signal is held; critical passes."""
    assert await book.consider(firing("a-1", "wire", cooldown=60)) is not None
    held = await book.consider(firing("b-1", "wire", embedding=OTHER, cooldown=60))
    assert held is None
    elsewhere = await book.consider(firing("c-1", "wire", embedding=unit(0, 0, 1),
                                           regions=("yemen",), cooldown=60))
    assert elsewhere is not None  # the cooldown is per region and signal
    critical = await book.consider(firing("d-1", "wire", embedding=unit(0, 0, 0, 1), score=0.9,
                                          weights={"strike": 2.0}, cooldown=60))
    assert critical is not None and critical.severity is Severity.CRITICAL


async def test_a_story_held_by_cooldown_is_sent_on_a_report_after_it(book: StoryBook) -> None:
    """A held story stays held while the cooldown runs; the first report after it sends it."""
    assert await book.consider(firing("a-1", "wire", cooldown=0.3)) is not None
    assert await book.consider(firing("b-1", "wire", embedding=OTHER, cooldown=0.3)) is None
    assert await book.consider(firing("b-2", "daily", embedding=OTHER, cooldown=0.3)) is None
    await asyncio.sleep(0.35)
    sent = await book.consider(firing("b-3", "arabic", embedding=OTHER, cooldown=0.3))
    assert sent is not None and sent.version == 1
    assert [s.article_id for s in sent.sources] == ["b-1", "b-2", "b-3"]


async def test_corroboration_holds_the_first_report_until_a_second_outlet(
        book: StoryBook) -> None:
    """With corroboration 2 the first report is kept unsent, the same outlet again too."""
    assert await book.consider(firing("wire-1", "wire", corroboration=2)) is None
    assert await book.consider(firing("wire-2", "wire", embedding=STORY_NEAR,
                                      corroboration=2)) is None
    sent = await book.consider(firing("ar-1", "arabic", embedding=STORY_NEAR, lang="ar",
                                      corroboration=2))
    assert sent is not None and sent.version == 1
    assert {s.feed for s in sent.sources} == {"wire", "arabic"} and len(sent.sources) == 3


async def test_updates_only_on_severity_rise_or_new_outlet(book: StoryBook) -> None:
    """The same outlet again says nothing new; a severity rise or a new outlet bumps the version."""
    first = await book.consider(firing("wire-1", "wire"))
    assert first is not None and first.severity is Severity.INFO
    assert await book.consider(firing("wire-2", "wire", embedding=STORY_NEAR)) is None
    rose = await book.consider(firing("wire-3", "wire", embedding=STORY_NEAR, score=0.9))
    assert rose is not None and (rose.version, rose.severity) == (2, Severity.WARNING)
    assert await book.consider(firing("wire-4", "wire", embedding=STORY_NEAR, score=0.5)) is None
    corroborated = await book.consider(firing("daily-1", "daily", embedding=STORY_NEAR))
    assert corroborated is not None and corroborated.version == 3
    assert corroborated.severity is Severity.WARNING  # never falls back
    assert len(corroborated.sources) == 5


async def test_reprocessing_an_article_hands_back_the_same_version(book: StoryBook) -> None:
    """After a crash the same article gives the same alert version (the outbox put is a no-op)."""
    first = await book.consider(firing("wire-1", "wire"))
    again = await book.consider(firing("wire-1", "wire"))
    assert first is not None and again == first
