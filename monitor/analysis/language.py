"""Language of a headline: "en", "ar" or "other", robust for short titles and Arabic script."""

from __future__ import annotations

import re
import unicodedata

from langdetect import DetectorFactory, LangDetectException, detect_langs

# langdetect samples randomly; a fixed seed makes the same text always get the same answer.
DetectorFactory.seed = 0

_ARABIC_BLOCKS = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF),
                  (0xFE70, 0xFEFF))
_ARABIC_SCRIPT_LANGS = {"ar", "fa", "ur", "ps", "ku", "ckb", "sd", "ug", "prs"}
_WORD = re.compile(r"[^\W\d_]+")
_DIACRITICS = re.compile(r"[\u064b-\u065f\u0670\u0640]")  # harakat, dagger alef, tatweel


def _vocab(*chunks: str) -> frozenset[str]:
    """A word set from space-separated chunks (one chunk per source line)."""
    return frozenset(" ".join(chunks).split())


# --- Arabic script: Arabic versus Persian and Urdu ---------------------------------------
_AR_WORDS = _vocab(
    "في من على إلى الى عن أن ان إن التي الذي الذين مع بعد قبل بين حول خلال ضد منذ عند "
    "لدى هذا هذه ذلك تلك كان كانت قد لم لن لا أو ثم حتى عبر دون إثر أمام وفي ومن وعلى "
    "يوم بعدما أمس اليوم غدا وسط جراء بسبب نحو لدعم إلا أي كل"
)
_OTHER_WORDS = _vocab(
    # Persian
    "است این آن که را از به در با برای شد شده کرد کند می نمی های ها خود بر یک تا هم نیز",
    "گفت اند بود ای اعلام کرده شود باید",
    # Urdu
    "کے کی کا میں ہے ہیں نے سے کو پر اور یہ وہ بھی لیے گیا تھا تھی گئی ایک کہ",
)
_AR_PREFIX2 = frozenset({"ال", "لل"})  # the definite article, alone or after li-
_AR_PREFIX3 = frozenset({"وال", "بال", "فال", "كال"})
_URDU_LETTERS = frozenset("ٹڈڑںےۓہھ")  # no place in Arabic orthography
_PERSIAN_LETTERS = frozenset("پچژگ")  # Persian/Urdu; Arabic uses them only in loan names
_ARABIC_ONLY = frozenset("ةىيك")  # ta marbuta, alef maksura, Arabic yeh and kaf
_GULF_LETTERS = frozenset("یک")  # Persian yeh and kaf
_GULF = str.maketrans("یک", "يك")

# --- Latin script: English versus the rest ------------------------------------------------
_EN_WORDS = _vocab(
    "the of and to in on for with at by from as is are was were after over says said "
    "amid into its it be has have will not than against about up out more who what how "
    "why this that an new his her their they he she we our two three been would could "
    "may after"
)
# English-only spellings of everyday news words: short headlines often have no function word.
_EN_NEWS = _vocab(
    "minister president government army police attack attacks killed kills strike "
    "strikes talks deal vote village residents report reports border troops forces "
    "rebels protest protests warns urges calls leader officials security near outside "
    "survives rocks fuel settlers weapons truce ceasefire fighting shelling wounded "
    "dozens hundreds thousands dead death toll soldiers court jailed arrested released "
    "meets hits hit heavy week night while during between without flee fled seize "
    "seized hostage hostages aid"
)
_LATIN_WORDS = {
    "fr": "le la les des du et un une est pour dans sur au aux par avec pas ne qui ce cette "
          "son sa ses à après selon contre plus été entre lors face l d",
    "de": "der die das und ist nicht mit von zu im den dem ein eine auf für nach bei aus "
          "gegen über wird werden sich auch des vor um",
    "es": "el la los las del y por para con una que se al tras sobre más según entre contra "
          "sus ante",
    "it": "il lo gli della di che per nel sono dopo alla del degli",
    "pt": "o os da do das dos em com para não uma após no na",
    "tr": "ve bir bu ile için olarak sonra karşı yeni ilk çok daha",
    "nl": "het een van en niet met voor op zijn naar bij",
}
_OTHER_LATIN = {lang: _vocab(words) for lang, words in _LATIN_WORDS.items()}
_FOREIGN_MARKS = {**dict.fromkeys("ıİğşŞ¿¡ñß", 1.0), **dict.fromkeys("éèêàçäöüáíóúãõâ", 0.4)}
_LATIN_LANGS = frozenset({"en", *_LATIN_WORDS, "id", "ms", "sw", "pl", "ro", "sv", "da", "no"})


def _script_of(ch: str) -> str:
    code = ord(ch)
    if any(lo <= code <= hi for lo, hi in _ARABIC_BLOCKS):
        return "arabic"
    if code < 0x0250 or 0x1E00 <= code <= 0x1EFF:
        return "latin"
    return "other"


def _script(text: str) -> str | None:
    """The script most letters are in: "arabic", "latin", "other", or None without letters."""
    counts = {"arabic": 0, "latin": 0, "other": 0}
    for ch in text:
        if ch.isalpha():
            counts[_script_of(ch)] += 1
    if not any(counts.values()):
        return None
    return max(counts, key=lambda script: counts[script])


def _hint(hint: str | None) -> tuple[str | None, str | None]:
    """(label, script) the feed's configured language implies, e.g. "fa" -> ("other", "arabic")."""
    if not hint:
        return None, None
    base = hint.strip().lower().replace("_", "-").split("-")[0]
    if base == "en":
        return "en", "latin"
    if base == "ar":
        return "ar", "arabic"
    if base in _ARABIC_SCRIPT_LANGS:
        return "other", "arabic"
    return "other", ("latin" if base in _LATIN_LANGS else None)


def _langdetect(text: str) -> dict[str, float]:
    try:
        return {r.lang: r.prob for r in detect_langs(text)}
    except LangDetectException:
        return {}


def _arabic_evidence(text: str) -> tuple[float, float]:
    """(Arabic score, Persian/Urdu score) from function words and script-specific letters."""
    words = _WORD.findall(_DIACRITICS.sub("", text))
    # Some Gulf sites type Persian yeh/kaf in Arabic words: match function words without them.
    arabic = 2.0 * sum(w.translate(_GULF) in _AR_WORDS for w in words)
    other = 2.0 * sum(w in _OTHER_WORDS for w in words)
    arabic += sum(1.0 for w in words
                  if len(w) > 3 and (w[:2] in _AR_PREFIX2 or w[:3] in _AR_PREFIX3))
    other += sum(1.0 for w in words if len(w) > 3 and (w.startswith("می") or w.endswith("های")))
    for ch in text:
        if ch in _URDU_LETTERS:
            other += 1.5
        elif ch in _PERSIAN_LETTERS:
            other += 0.7
        elif ch in _ARABIC_ONLY:
            arabic += 0.5
        elif ch in _GULF_LETTERS:
            other += 0.25  # Persian/Urdu spelling, but also used by some Gulf Arabic sites
    return arabic, other


def _arabic_script(text: str, hint: str | None) -> str:
    hint_label, hint_script = _hint(hint)
    arabic, other = _arabic_evidence(text)
    if abs(arabic - other) >= 2:
        return "ar" if arabic > other else "other"
    if hint_script == "arabic" and hint_label:
        return hint_label
    if arabic != other:
        return "ar" if arabic > other else "other"
    probs = _langdetect(text)
    best = max(("ar", "fa", "ur"), key=lambda lang: probs.get(lang, 0.0))
    return "ar" if best == "ar" or not probs else "other"


def _latin_evidence(words: list[str]) -> tuple[float, float]:
    """(English score, best other-language score) from function words and foreign diacritics."""
    lowered = [w.lower() for w in words]
    english = float(sum(w in _EN_WORDS or w in _EN_NEWS for w in lowered))
    others = [sum(w in vocab for w in lowered) for vocab in _OTHER_LATIN.values()]
    marks = sum(_FOREIGN_MARKS.get(ch, 0.0) for w in lowered for ch in w)
    return english, max(others) + marks


def _latin_script(text: str, hint: str | None) -> str:
    hint_label, hint_script = _hint(hint)
    words = _WORD.findall(text)
    english, other = _latin_evidence(words)
    if english - other >= 1:
        return "en"
    if other - english >= 1:
        return "other"
    if hint_script == "latin" and hint_label:
        return hint_label  # no evidence either way: trust the feed's language
    probs = _langdetect(text)
    top = max(probs, key=lambda lang: probs[lang], default="en")
    if probs.get("en", 0.0) >= 0.3 or top == "en":
        return "en"
    return "other" if probs[top] >= 0.7 else "en"


def detect_language(text: str, *, hint: str | None = None) -> str:
    """Return "en", "ar" or "other" for a headline or short text; ``hint``: the feed's language."""
    text = unicodedata.normalize("NFKC", text)
    script = _script(text)
    if script == "arabic":
        return _arabic_script(text, hint)
    if script == "latin":
        return _latin_script(text, hint)
    if script == "other":
        return "other"
    return _hint(hint)[0] or "other"
