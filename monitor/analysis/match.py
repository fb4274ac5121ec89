"""Watch-list rules: which regions, keywords and patterns an article hits, and which lists fire.

The rule, per enabled watch-list (pure, no I/O, compiled once per config):

1. Region: when ``require_region`` is true, some region found in the text must be
   one of the list's ``regions`` (any region at all when that list is empty).
2. Exclusion: any ``exclude_keywords`` hit means the list does not fire.
3. Then it fires when EITHER
   a. the model score >= ``min_score`` AND the signal condition holds, OR
   b. a keyword or pattern hits AND the model score >= ``min_score / 2``.

The signal condition: consider the top three signals by score among those scoring
at least ``threshold``. It holds when one of them is in the list's ``signals``
(every escalation signal when that list is empty); it also holds when the
classifier reported no signal scores at all, or when the list names no signals
and no signal reached ``threshold`` (the calibrated score alone then decides).

Keywords, exclusions and region names match whole words of normalised text (see
:mod:`monitor.analysis.normalize`); patterns are RE2 (linear time) on the same
normalised text, case-insensitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.analysis.normalize import PhraseMatcher, normalize, tokens
from monitor.config import Config, Watchlist, compile_pattern
from monitor.models import SignalScore

TOP_SIGNALS = 3


@dataclass(frozen=True)
class WatchlistHit:
    """One watch-list that fired for an article, and why."""

    watchlist: str
    regions: tuple[str, ...]
    keywords: tuple[str, ...]
    signals: tuple[SignalScore, ...]
    score: float
    channels: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class _Compiled:
    """One watch-list's matchers, built once."""

    watchlist: Watchlist
    keywords: PhraseMatcher
    excludes: PhraseMatcher
    patterns: tuple[Any, ...]
    signals: frozenset[str]
    regions: frozenset[str]
    channels: tuple[str, ...]


class Matcher:
    """The gazetteer and every watch-list of one Config, compiled for repeated use."""

    def __init__(self, config: Config) -> None:
        # Keyed by tokens, not spelling: "Shebaa Farms" and "Shebaa farms" are one name.
        self._region_of: dict[tuple[str, ...], list[str]] = {}
        self._key_of: dict[str, tuple[str, ...]] = {}
        for region in config.regions:
            for name in [*region.names.en, *region.names.ar]:
                key = self._key_of.setdefault(name, tuple(tokens(name)))
                if key and region.name not in self._region_of.setdefault(key, []):
                    self._region_of[key].append(region.name)
        self._gazetteer = PhraseMatcher(self._key_of)
        escalation = frozenset(config.escalation_signals())
        enabled = tuple(ch.name for ch in config.enabled_channels())
        self._lists = {
            wl.name: _compile(wl, escalation, config, enabled)
            for wl in config.watchlists
            if wl.enabled
        }

    def regions(self, text: str) -> list[str]:
        """Region names mentioned in ``text``, ordered by first mention."""
        return self._regions_in(tokens(text))

    def keywords(self, text: str, watchlist: str) -> list[str]:
        """The watch-list's keywords found in ``text``, in order of first occurrence."""
        return self._lists[watchlist].keywords.phrases_in(tokens(text))

    def patterns(self, text: str, watchlist: str) -> list[str]:
        """The text each of the watch-list's patterns matched (normalised), one per pattern."""
        return _pattern_hits(self._lists[watchlist], normalize(text))

    def evaluate(
        self,
        text: str,
        score: float,
        signals: Sequence[SignalScore],
        threshold: float = 0.0,
    ) -> list[WatchlistHit]:
        """Every enabled watch-list that fires for this article (see the module rule)."""
        normal = normalize(text)
        words = tokens(normal)
        found_regions = self._regions_in(words)
        top = sorted((s for s in signals if s.score >= threshold), key=lambda s: -s.score)
        top = top[:TOP_SIGNALS]
        hits = []
        for compiled in self._lists.values():
            hit = _judge(compiled, normal, words, found_regions, score, bool(signals), top)
            if hit is not None:
                hits.append(hit)
        return hits

    def _regions_in(self, words: list[str]) -> list[str]:
        found: dict[str, None] = {}
        for hit in self._gazetteer.find(words):
            for region in self._region_of.get(self._key_of[hit.phrase], ()):
                found.setdefault(region)
        return list(found)


def _compile(
    wl: Watchlist, escalation: frozenset[str], config: Config, enabled: tuple[str, ...]
) -> _Compiled:
    channels = enabled if "all" in wl.channels else tuple(c for c in enabled if c in wl.channels)
    return _Compiled(
        watchlist=wl,
        keywords=PhraseMatcher(wl.keywords),
        excludes=PhraseMatcher(wl.exclude_keywords),
        patterns=tuple(compile_pattern(p) for p in wl.patterns),
        signals=frozenset(wl.signals) or escalation,
        regions=frozenset(wl.regions) or frozenset(r.name for r in config.regions),
        channels=channels,
    )


def _pattern_hits(compiled: _Compiled, normal: str) -> list[str]:
    found = []
    for pattern in compiled.patterns:
        match = pattern.search(normal)
        if match is not None:
            found.append(str(match.group(0)))
    return found


def _judge(
    c: _Compiled,
    normal: str,
    words: list[str],
    regions: list[str],
    score: float,
    reported: bool,
    top: list[SignalScore],
) -> WatchlistHit | None:
    wl = c.watchlist
    in_scope = [r for r in regions if r in c.regions]
    if wl.require_region and not in_scope:
        return None
    if c.excludes and c.excludes.find(words):
        return None
    matched = [s for s in top if s.name in c.signals]
    signal_ok = not reported or bool(matched) or (not wl.signals and not top)
    terms = c.keywords.phrases_in(words) + _pattern_hits(c, normal)
    if score >= wl.min_score and signal_ok:
        why = f"score {score:.2f} >= {wl.min_score:.2f}"
        why += f", signals {', '.join(s.name for s in matched)}" if matched else ""
    elif terms and score >= wl.min_score / 2:
        why = f"keywords {', '.join(terms)} with score {score:.2f} >= {wl.min_score / 2:.2f}"
    else:
        return None
    if in_scope:
        why += f"; regions {', '.join(in_scope)}"
    return WatchlistHit(
        watchlist=wl.name,
        regions=tuple(in_scope or regions),
        keywords=tuple(terms),
        signals=tuple(matched),
        score=score,
        channels=c.channels,
        reason=why,
    )
