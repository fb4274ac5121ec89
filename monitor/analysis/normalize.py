"""Text normalisation for matching (English and Arabic) and a word-boundary phrase matcher.

Both sides of every match go through :func:`normalize`, so a keyword written
``"الحوثيّين"`` matches ``"والحوثيين"`` in a headline, and ``"Hezbollah"`` matches
``"HEZBOLLAH's"``. Matching is on whole tokens: ``strike`` does not match
``strikers``. In the text, a phrase's first Arabic word may carry the attached
proclitics و ف ب ك ل and the article ال: ``والعراق``, ``بالعراق`` and ``للعراق``
match both ``العراق`` and ``عراق``. A keyword's own article is kept (``الخليل``,
Hebron, does not match the name ``خليل``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Harakat, tanwin, shadda, sukun, maddah/hamza marks, superscript alef and the
# Quranic annotation marks: none of them changes which word is meant.
_MARKS = "[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed\u08d3-\u08ff]"
# Zero-width and bidi controls: invisible, yet they split words and are used to
# disguise text (RLO tricks), so they must never decide a match.
_INVISIBLE = "[\u00ad\u061c\u0640\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
_DROP = re.compile(f"{_MARKS}|{_INVISIBLE}")

_LETTERS = str.maketrans(
    {
        "\u0623": "\u0627",  # أ → ا
        "\u0625": "\u0627",  # إ → ا
        "\u0622": "\u0627",  # آ → ا
        "\u0671": "\u0627",  # ٱ → ا
        "\u0672": "\u0627",  # ٲ → ا
        "\u0673": "\u0627",  # ٳ → ا
        "\u0624": "\u0648",  # ؤ → و
        "\u0626": "\u064a",  # ئ → ي
        "\u0629": "\u0647",  # ة → ه
        "\u06c0": "\u0647",  # ۀ → ه
        "\u0649": "\u064a",  # ى → ي
        "\u06a9": "\u0643",  # Persian ک → ك
        "\u06cc": "\u064a",  # Persian ی → ي
        **{chr(0x0660 + d): str(d) for d in range(10)},  # Arabic-Indic digits
        **{chr(0x06F0 + d): str(d) for d in range(10)},  # Eastern Arabic-Indic digits
    }
)
_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+")
_ARABIC = re.compile("[\u0600-\u06ff]")

# Attached clitics allowed in front of a phrase's first word: conjunction (و ف),
# then preposition (ب ك ل), then the article (ال; ل + ال is written لل).
_CONJ = ("", "و", "ف")
_PREP = ("", "ب", "ك", "ل")
PROCLITICS: tuple[str, ...] = tuple(
    sorted(
        {c + ("لل" if p == "ل" and a else p + a) for c in _CONJ for p in _PREP for a in ("", "ال")}
        - {""},
        key=len,
        reverse=True,
    )
)
_MIN_STEM = 2  # a stem shorter than this is too ambiguous to strip a clitic from


def fold_arabic(text: str) -> str:
    """Arabic letter unification and mark/control removal only (safe on regex source)."""
    return _DROP.sub("", text).translate(_LETTERS)


def normalize(text: str) -> str:
    """NFKC, casefold, Arabic unification, invisible characters removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", fold_arabic(text)).strip()


def tokens(text: str) -> list[str]:
    """The word tokens of ``text`` after :func:`normalize` (punctuation and hyphens split)."""
    return _TOKEN.findall(normalize(text))


def stems(token: str) -> Iterator[str]:
    """``token`` and its forms with an Arabic proclitic stripped (already normalised).

    When the stripped clitic carried the article, the form with ``ال`` is yielded
    too, so ``للعراق`` offers ``عراق`` and ``العراق``.
    """
    yield token
    if not _ARABIC.match(token):
        return
    for clitic in PROCLITICS:
        if token.startswith(clitic) and len(token) - len(clitic) >= _MIN_STEM:
            rest = token[len(clitic) :]
            yield rest
            if clitic.endswith(("ال", "لل")):
                yield "ال" + rest


@dataclass(frozen=True)
class PhraseHit:
    """One phrase found in a text: which phrase, and the token span it covers."""

    phrase: str
    start: int
    end: int


class PhraseMatcher:
    """Finds configured phrases in text on whole normalised tokens, Arabic proclitics allowed."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self._index: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for phrase in dict.fromkeys(phrases):
            words = tokens(phrase)
            if not words:
                continue
            self._index.setdefault(words[0], []).append((tuple(words[1:]), phrase))
        for entries in self._index.values():
            entries.sort(key=lambda entry: len(entry[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._index)

    def find(self, words: list[str]) -> list[PhraseHit]:
        """Longest non-overlapping hits in token order (``words`` from :func:`tokens`)."""
        hits: list[PhraseHit] = []
        i = 0
        while i < len(words):
            hit = self._longest_at(words, i)
            if hit is None:
                i += 1
                continue
            hits.append(hit)
            i = hit.end
        return hits

    def all_at(self, words: list[str], i: int) -> list[PhraseHit]:
        """Every phrase (not only the longest) starting at token ``i``."""
        found: list[PhraseHit] = []
        for stem in stems(words[i]):
            for rest, phrase in self._index.get(stem, ()):
                end = i + 1 + len(rest)
                if tuple(words[i + 1 : end]) == rest:
                    found.append(PhraseHit(phrase, i, end))
        return found

    def _longest_at(self, words: list[str], i: int) -> PhraseHit | None:
        found = self.all_at(words, i)
        return max(found, key=lambda h: h.end - h.start) if found else None

    def phrases_in(self, words: list[str]) -> list[str]:
        """The distinct configured phrases found, in order of first occurrence."""
        return list(dict.fromkeys(hit.phrase for hit in self.find(words)))
