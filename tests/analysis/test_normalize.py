"""Tests for monitor.analysis.normalize: the normalisation table and whole-word phrase matching."""

from __future__ import annotations

import pytest

from monitor.analysis.normalize import PhraseMatcher, normalize, stems, tokens

NORMALISATION = [
    # (what it pins, input, expected)
    ("alef with hamza above", "أحمد", "احمد"),
    ("alef with hamza below", "إيران", "ايران"),
    ("alef madda", "آلاف", "الاف"),
    ("alef wasla", "ٱلعراق", "العراق"),
    ("hamza on waw", "مؤتمر", "موتمر"),
    ("hamza on ya", "رئيس", "رييس"),
    ("ta marbuta", "غزة", "غزه"),
    ("alef maqsura", "مستشفى", "مستشفي"),
    ("harakat and sukun", "العِرَاقُ مَدْرَسَة", "العراق مدرسه"),
    ("tanwin and shadda", "هجومٌ مُسيّرة", "هجوم مسيره"),
    ("superscript alef", "هٰذا", "هذا"),
    ("tatweel", "غـــزة", "غزه"),
    ("Arabic-Indic digits", "٢٠٢٣", "2023"),
    ("Eastern Arabic-Indic digits", "۱۴۰۲", "1402"),
    ("Persian kaf and yeh", "کرمانشاه ایران", "كرمانشاه ايران"),
    ("zero-width joiner and non-joiner", "حز\u200dب\u200c الله", "حزب الله"),
    ("bidi overrides and marks", "\u202eHamas\u202c \u200fغزة\u200e", "hamas غزه"),
    ("byte order mark and soft hyphen", "\ufeffHez\u00adbollah", "hezbollah"),
    ("presentation forms (NFKC)", "ﻏﺰﺓ", "غزه"),
    ("lam-alef ligature (NFKC)", "ﻻ", "لا"),
    ("case folding", "ISRAEL Straße", "israel strasse"),
    ("full-width Latin (NFKC)", "ＩＲＡＱ", "iraq"),
    ("whitespace collapsed", "  Red\t\nSea  ", "red sea"),
]


@pytest.mark.parametrize(
    ("label", "text", "expected"), NORMALISATION, ids=[c[0] for c in NORMALISATION]
)
def test_normalize_table(label: str, text: str, expected: str) -> None:
    """normalize() unifies each listed Arabic/Unicode variant to one matching form."""
    assert normalize(text) == expected, label


def test_normalize_is_idempotent() -> None:
    """Normalising twice changes nothing, so pre-normalised text can be passed again."""
    text = "\u202eوالعِرَاقُ ٢٠٢٣ — Hezbollah’s"
    assert normalize(normalize(text)) == normalize(text)


def test_tokens_split_on_punctuation_and_hyphens() -> None:
    """Tokens are words: hyphens, apostrophes and Arabic punctuation separate them."""
    assert tokens("Iran-backed; Israel’s «غزة»، والعراق؟") == [
        "iran",
        "backed",
        "israel",
        "s",
        "غزه",
        "والعراق",
    ]


def test_stems_strip_proclitics() -> None:
    """Attached و ف ب ك ل and ال are stripped, and ل+ال (لل) restores the article."""
    assert {"عراق", "العراق"} <= set(stems("للعراق"))
    assert "العراق" in set(stems("والعراق"))
    assert "عراق" in set(stems("بالعراق"))
    assert list(stems("strikers")) == ["strikers"]


def find(phrases: list[str], text: str) -> list[str]:
    """Phrases found in text, in order."""
    return [hit.phrase for hit in PhraseMatcher(phrases).find(tokens(text))]


MATCHES = [
    # (phrases, text, expected phrases found)
    (["strike"], "strikers strike again", ["strike"]),
    (["strike"], "Strikers gathered", []),
    (["Iran"], "Iranian officials", []),
    (["Iran"], "Iran-backed militia", ["Iran"]),
    (["Israel"], "Israel’s boundary", ["Israel"]),
    (["Ain al-Asad"], "the Ain Al Asad airbase", ["Ain al-Asad"]),
    (["Tower 22"], "Tower 220 and Tower 22", ["Tower 22"]),
    (["ground offensive"], "a ground  OFFENSIVE into Gaza", ["ground offensive"]),
    (["ground offensive"], "ground-level offensive", []),
    (["العراق"], "في العراق", ["العراق"]),
    (["العراق"], "والعراق", ["العراق"]),
    (["العراق"], "بالعراق", ["العراق"]),
    (["العراق"], "للعراق", ["العراق"]),
    (["العراق"], "وبالعراق", ["العراق"]),
    (["عراق"], "والعراق", ["عراق"]),
    (["عراق"], "العراقية", []),
    (["الخليل"], "قال خليل", []),
    (["غزة"], "بغزة ولغزة", ["غزة", "غزة"]),
    (["حزب الله"], "وحزب الله", ["حزب الله"]),
    (["حزب الله"], "حزب اللهو", []),
    (["الحوثيين"], "والحوثيّين", ["الحوثيين"]),
    (["إيران"], "لايران", ["إيران"]),
    (["لبنان"], "بنان", []),
    (["Hezbollah", "Kataib Hezbollah"], "Kataib Hezbollah fighters", ["Kataib Hezbollah"]),
]


@pytest.mark.parametrize(("phrases", "text", "expected"), MATCHES)
def test_phrase_matching(phrases: list[str], text: str, expected: list[str]) -> None:
    """Whole-word matching on normalised text, longest phrase first, Arabic proclitics allowed."""
    assert find(phrases, text) == expected


def test_empty_matcher_is_falsey() -> None:
    """A matcher with no usable phrases says so, so callers can skip it."""
    assert not PhraseMatcher([])
    assert not PhraseMatcher(["!!!"])
    assert PhraseMatcher(["x"])
