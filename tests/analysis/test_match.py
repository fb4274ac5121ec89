"""Tests for monitor.analysis.match: the gazetteer, keywords, patterns and the firing rule."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitor.analysis.match import Matcher
from monitor.config import Config, load_config
from monitor.models import SignalScore
from tests.test_config import BASE, REPO, shipped_copy, write_tree

FOUNDING_REGIONS = {"iraq", "syria", "lebanon", "yemen", "red-sea", "israel", "gaza", "iran"}


def founding_article() -> str:
    """The founding article from seeds/ in the repo, else the shared seeds folder."""
    for path in (
        REPO / "seeds" / "founding-article.txt",
        REPO.parent / "shared" / "seeds" / "founding-article.txt",
    ):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    pytest.fail("founding-article.txt not found in seeds/ or ../shared/seeds/")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The shipped config/, loaded once."""
    return load_config(shipped_copy(tmp_path_factory.mktemp("shipped")), env={})


def test_founding_article_regions(shipped: Config) -> None:
    """The founding article places the story in every region of the spillover it describes."""
    found = Matcher(shipped).regions(founding_article())
    assert set(found) >= FOUNDING_REGIONS
    assert found[:2] == ["israel", "gaza"]  # ordered by first mention: "Israel and Hamas"


def test_founding_article_fires_default_watchlist(shipped: Config) -> None:
    """With an escalation score and signal, the default watch-list fires and explains why."""
    signal = shipped.escalation_signals()[0]
    hits = Matcher(shipped).evaluate(founding_article(), 0.8, [SignalScore(name=signal, score=0.7)])
    (hit,) = hits
    assert hit.watchlist == "middle-east"
    assert set(hit.regions) >= FOUNDING_REGIONS
    assert "ground offensive" in hit.keywords
    assert hit.channels == ("console",)
    assert signal in hit.reason


ARABIC = (
    "قال مسؤولون عراقيون إن طائرة مسيّرة استهدفت قاعدة عين الأسد في الأنبار، فيما أعلن "
    "الحوثيون إطلاق صواريخ نحو إيلات، وأكد حزب الله قصف مواقع في مزارع شبعا وسط تحذيرات "
    "من توسع الحرب على غزة إلى لبنان وسوريا وإيران والبحر الأحمر."
)


def test_arabic_article_regions(shipped: Config) -> None:
    """An Arabic report is placed in its regions through cities, bases, groups and prefixes."""
    found = Matcher(shipped).regions(ARABIC)
    assert set(found) >= FOUNDING_REGIONS
    assert found[0] == "iraq"


@pytest.mark.parametrize(
    ("text", "regions"),
    [
        ("Kataib Hezbollah claimed the attack", ["iraq"]),
        ("Hizballah and the Huthis", ["lebanon", "yemen"]),
        ("Ships diverted from the Gulf of Aden and Bab el-Mandeb", ["red-sea", "yemen"]),
        ("Drone hit Tower 22 near the Syrian border", ["jordan", "syria"]),
        ("Strikes near Al-Tanf and Al Udeid on alert", ["syria", "gulf"]),
        ("غارات على الضاحية الجنوبية لبيروت", ["lebanon"]),
        ("أنصار الله تعلن استهداف سفينة في خليج عدن", ["yemen", "red-sea"]),
        ("صور من الحفل", []),
        ("Nothing regional here: markets in Tokyo", []),
    ],
)
def test_gazetteer_cases(shipped: Config, text: str, regions: list[str]) -> None:
    """Groups imply places, longer names win, common Arabic nouns are not places."""
    assert Matcher(shipped).regions(text) == regions


LISTS = {
    **BASE,
    "watchlists/levant.yaml": "regions: [lebanon]\nkeywords: [ground offensive]\n"
    "patterns: ['rockets? (fired|launched)']\nexclude_keywords: [exercise]\n",
    "watchlists/truce.yaml": "regions: [lebanon]\nsignals: [ceasefire]\nmin_score: 0.5\n",
    "watchlists/anywhere.yaml": "require_region: false\nmin_score: 0.8\nsignals: [drone-strike]\n",
    "watchlists/off.yaml": "enabled: false\nmin_score: 0\n",
}
DRONE = SignalScore(name="drone-strike", score=0.8)
TRUCE = SignalScore(name="ceasefire", score=0.9)
OTHERS = [SignalScore(name=n, score=0.95) for n in ("x-one", "x-two", "x-three")]

RULES = [
    # (what it pins, text, score, signals, threshold, watch-lists expected to fire)
    ("score and escalation signal", "Strike in Beirut", 0.6, [DRONE], 0.0, ["levant"]),
    ("score below min_score", "Strike in Beirut", 0.4, [DRONE], 0.0, []),
    ("keyword at half the score", "A ground offensive on Lebanon", 0.3, [], 0.0, ["levant"]),
    ("keyword below half the score", "A ground offensive on Lebanon", 0.2, [], 0.0, []),
    ("pattern at half the score", "Rockets fired at Beirut", 0.26, [], 0.0, ["levant"]),
    ("region required", "Strike in Baghdad", 0.6, [DRONE], 0.0, []),
    ("region not required", "Strike in Baghdad", 0.85, [DRONE], 0.0, ["anywhere"]),
    ("exclude keyword", "Beirut ground offensive exercise", 0.7, [DRONE], 0.0, []),
    ("de-escalation signal only", "Truce in Beirut", 0.7, [TRUCE], 0.0, ["truce"]),
    ("no signal scores: score decides", "Strike in Beirut", 0.6, [], 0.0, ["levant", "truce"]),
    ("signal outside the top 3", "Strike in Beirut", 0.9, [*OTHERS, TRUCE], 0.0, []),
    (
        "weak signals ignored",
        "Strike in Beirut",
        0.6,
        [SignalScore(name="drone-strike", score=0.2)],
        0.3,
        ["levant"],
    ),
]


@pytest.mark.parametrize(
    ("label", "text", "score", "signals", "threshold", "expected"), RULES, ids=[r[0] for r in RULES]
)
def test_firing_rule(
    tmp_path: Path,
    label: str,
    text: str,
    score: float,
    signals: list[SignalScore],
    threshold: float,
    expected: list[str],
) -> None:
    """Each row pins one clause of the rule documented in monitor.analysis.match."""
    matcher = Matcher(load_config(write_tree(tmp_path, LISTS), env={}))
    hits = matcher.evaluate(text, score, signals, threshold)
    assert sorted(h.watchlist for h in hits) == sorted(expected), label


def test_keywords_and_patterns_report_what_matched(tmp_path: Path) -> None:
    """keywords() and patterns() return the configured keyword and the normalised matched text."""
    matcher = Matcher(load_config(write_tree(tmp_path, LISTS), env={}))
    text = "Rockets LAUNCHED before the Ground Offensive"
    assert matcher.keywords(text, "levant") == ["ground offensive"]
    assert matcher.patterns(text, "levant") == ["rockets launched"]


def test_catastrophic_pattern_is_linear(tmp_path: Path) -> None:
    """(a+)+$ on 'a'*50000+'!' returns at once under RE2 instead of backtracking for ever."""
    files = {**BASE, "watchlists/levant.yaml": "regions: [lebanon]\npatterns: ['(a+)+$']\n"}
    matcher = Matcher(load_config(write_tree(tmp_path, files), env={}))
    started = time.monotonic()
    assert matcher.patterns("a" * 50_000 + "!", "levant") == []
    assert matcher.evaluate("Beirut " + "a" * 50_000 + "!", 0.1, []) == []
    assert time.monotonic() - started < 1.0


def test_matching_is_fast(shipped: Config) -> None:
    """Evaluating the founding article against the shipped config takes milliseconds."""
    matcher = Matcher(shipped)
    text = founding_article()
    started = time.perf_counter()
    for _ in range(20):
        matcher.evaluate(text, 0.7, [])
    assert (time.perf_counter() - started) / 20 < 0.05
