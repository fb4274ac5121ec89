"""Feed bytes to text: BOM, declared charsets checked against the bytes, else a scored guess."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from email.message import Message

# Order matters: the UTF-32 LE BOM starts with the UTF-16 LE BOM.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# "<?" or "<r" in UTF-16/32 without a BOM: the XML spec's autodetection table.
_NUL_PATTERNS = (
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00", "utf-16-le"),
    (b"\x00<", "utf-16-be"),
)
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]{0,200}?encoding\s*=\s*[\"']([A-Za-z0-9._:-]{1,40})[\"']")
_XML_DECL_TEXT = re.compile(r"^\s*<\?xml[^>]{0,200}?\?>")
_ENCODING_ATTR = re.compile(r"""encoding\s*=\s*["'][^"']*["']""")

# Legacy 8-bit charsets that decode any byte string, so "decodes cleanly" proves nothing.
_AMBIGUOUS = {"cp1256", "iso8859-6", "cp1252", "latin-1", "iso8859-15"}
# Guesses when nothing declared fits; cp1256 first so it wins ties (Arabic is first-class).
_GUESSES = ("cp1256", "iso8859-6", "cp1252")
# Scoring a prefix is enough to tell the encodings apart and keeps big bodies cheap.
_SAMPLE = 256 * 1024
_WORD = re.compile(r"[^\W\d_]*[^\x00-\x7f][^\W\d_]*")
_ARABIC_LETTER = re.compile(r"[\u0621-\u064a\u0671-\u06d3]")
_C1 = re.compile(r"[\x80-\x9f]")
# UTF-8 with a few broken bytes (a bad splice) is still UTF-8: tolerate up to this share.
_UTF8_BAD_SHARE = 0.01


@dataclass(frozen=True)
class Decoded:
    """Feed text and the charset it was decoded with (for logs)."""

    text: str
    encoding: str


def _normalise(label: str | None) -> str | None:
    """The codec name for a charset label, or None if Python does not know it."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None
    # Browsers read latin-1 as windows-1252 (WHATWG): the bytes 0x80-0x9F are letters there.
    return "cp1252" if name in {"latin-1", "iso8859-1"} else name


def header_charset(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header, if any."""
    if not content_type:
        return None
    msg = Message()
    msg["content-type"] = content_type
    value = msg.get_param("charset")
    return value if isinstance(value, str) else None


def declared_charsets(content: bytes, content_type: str | None) -> list[str]:
    """Codec names declared by the header, then by the XML declaration; unknown labels dropped."""
    found = [header_charset(content_type)]
    match = _XML_DECL.match(content[:512])
    if match:
        found.append(match.group(1).decode("ascii"))
    names = [_normalise(label) for label in found]
    return list(dict.fromkeys(name for name in names if name))


def _plausibility(text: str) -> int:
    """How much a decoding reads as words: Arabic or lightly accented Latin gain, mojibake loses."""
    score = -8 * (text.count("\ufffd") + len(_C1.findall(text)))
    for word in _WORD.findall(text):
        arabic = len(_ARABIC_LETTER.findall(word))
        if arabic == len(word):
            score += arabic
        elif arabic:
            score -= len(word)  # Arabic and Latin letters inside one word: wrong table
        elif sum(1 for ch in word if ord(ch) > 0x7F) * 2 <= len(word):
            score += len(word)  # "élève", "Erdoğan": accents among ASCII letters
        else:
            score -= len(word)  # "ÇáÚÑÈíÉ": Arabic bytes read as Latin-1
    return score


def _best_guess(content: bytes, extra: str | None = None) -> str:
    """The legacy charset whose decoding of a sample looks most like real text."""
    sample = content[:_SAMPLE]
    candidates = ([extra] if extra else []) + [g for g in _GUESSES if g != extra]
    scores = {cs: _plausibility(sample.decode(cs, errors="replace")) for cs in candidates}
    return max(candidates, key=lambda cs: scores[cs])  # max keeps the first on ties


def _strict(content: bytes, encoding: str) -> str | None:
    try:
        return content.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _mostly_utf8(content: bytes) -> str | None:
    """The UTF-8 reading of bytes with at most a few invalid sequences, else None."""
    text = content.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    non_ascii = sum(1 for ch in text if ord(ch) > 0x7F) if bad else 0
    if bad == 0 or bad <= _UTF8_BAD_SHARE * non_ascii:
        return text
    return None


def _sniff_unicode(content: bytes) -> tuple[int, str] | None:
    """(BOM length, codec) for a BOM or a BOM-less UTF-16/32 document start."""
    for bom, name in _BOMS:
        if content.startswith(bom):
            return len(bom), name
    for pattern, name in _NUL_PATTERNS:
        if content.startswith(pattern):
            return 0, name
    return None


def _from_declared(content: bytes, declared: list[str]) -> Decoded | None:
    """The first declared charset that the bytes bear out."""
    utf8_ok = _mostly_utf8(content) is not None
    for name in declared:
        if name in _AMBIGUOUS:
            if utf8_ok:
                continue  # valid multi-byte UTF-8 is never an accident: the label lies
            chosen = _best_guess(content, extra=name)
            return Decoded(content.decode(chosen, errors="replace"), chosen)
        text = _mostly_utf8(content) if name == "utf-8" else _strict(content, name)
        if text is not None and not (name.startswith(("utf-16", "utf-32")) and "\x00" in text):
            return Decoded(text, name)
    return None


def decode_feed(content: bytes, content_type: str | None = None) -> Decoded:
    """Decode feed bytes: BOM, a declared charset the bytes bear out, UTF-8, else a scored guess."""
    sniffed = _sniff_unicode(content)
    if sniffed is not None:
        skip, name = sniffed
        return Decoded(content[skip:].decode(name, errors="replace"), name)
    if content.isascii():
        return Decoded(content.decode("ascii"), "ascii")
    declared = _from_declared(content, declared_charsets(content, content_type))
    if declared is not None:
        return declared
    text = _mostly_utf8(content)
    if text is not None:
        return Decoded(text, "utf-8")
    chosen = _best_guess(content)
    return Decoded(content.decode(chosen, errors="replace"), chosen)


def declare_utf8(text: str) -> str:
    """The document with its XML declaration (if any) saying encoding="utf-8"."""
    match = _XML_DECL_TEXT.match(text[:300])
    if match is None:
        return text
    decl = match.group(0)
    fixed = _ENCODING_ATTR.sub('encoding="utf-8"', decl)
    return fixed + text[match.end():]
