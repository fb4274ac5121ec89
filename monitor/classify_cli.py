"""The `classify` and `eval` commands: JSON lines in, verdicts out, in order."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from monitor.analysis.language import detect_language
from monitor.models import Article, Verdict

if TYPE_CHECKING:
    from monitor.analyze import Judge

CHUNK = 64


@dataclass(frozen=True)
class Row:
    """One input line: an article to judge, or the reason it could not be read."""

    line: int
    article: Article | None
    label: int | None = None
    error: str = ""


def read_rows(stream: TextIO) -> Iterator[Row]:
    """Parse JSON lines; a bad line becomes a Row with an error naming its line number."""
    for n, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            title, summary = str(obj.get("title") or ""), str(obj.get("summary") or "")
            if not (title or summary):
                raise ValueError('needs "title" or "summary"')
            art = Article(id=str(obj.get("id", n)), feed="input", feed_url="", title=title,
                          summary=summary, lang_hint=obj.get("lang"))
            lang = obj.get("lang") or detect_language(art.text)
            label = obj.get("label")
            yield Row(n, art.model_copy(update={"lang": lang}),
                      int(label) if label is not None else None)
        except (ValueError, TypeError) as exc:
            yield Row(n, None, error=f"line {n}: {exc}")


def judge_rows(judge: Judge, rows: list[Row]) -> Iterator[tuple[Row, Verdict | None]]:
    """Judge in chunks (progress bar on stderr for long inputs), yielding in input order."""
    bar = tqdm(total=len(rows), file=sys.stderr, unit="text", disable=len(rows) <= CHUNK,
               desc="classify")
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        good = [r.article for r in chunk if r.article is not None]
        verdicts = iter(j.verdict for j in judge.judge(good)) if good else iter(())
        for r in chunk:
            yield r, (next(verdicts) if r.article is not None else None)
        bar.update(len(chunk))
    bar.close()


def verdict_json(row: Row, verdict: Verdict | None) -> dict[str, object]:
    """The stable output object of one line."""
    if verdict is None or row.article is None:
        return {"id": None, "error": row.error}
    return {
        "id": row.article.id, "lang": verdict.lang, "score": round(verdict.score, 6),
        "escalation": verdict.escalation,
        "signals": [{"name": s.name, "score": round(s.score, 6)} for s in verdict.signals],
        "regions": list(verdict.regions),
    }


def classify_lines(judge: Judge, stream: TextIO, out: TextIO) -> int:
    """Write one JSON line per input line; exit 1 when some line could not be read."""
    rows = list(read_rows(stream))
    bad = 0
    for row, verdict in judge_rows(judge, rows):
        if verdict is None:
            bad += 1
            print(f"error: {row.error}", file=sys.stderr)
        out.write(json.dumps(verdict_json(row, verdict), ensure_ascii=False) + "\n")
    out.flush()
    return 1 if bad else 0


def explain_text(judge: Judge, text: str) -> str:
    """A readable explanation of one text's verdict."""
    title, _, summary = text.partition("\n")
    art = Article(id="text", feed="cli", feed_url="", title=title.strip(),
                  summary=summary.strip())
    art = art.model_copy(update={"lang": detect_language(art.text)})
    (jd,) = judge.judge([art])
    v = jd.verdict
    lines = [
        f"language:   {v.lang}",
        f"escalation: {'YES' if v.escalation else 'no'} (probability {v.score:.2f}, "
        f"threshold {judge.classifier.threshold:.2f})",
        "signals:    " + (", ".join(f"{s.name} {s.score:.2f}" for s in v.signals[:5]) or "-"),
        "regions:    " + (", ".join(v.regions) or "-"),
        "keywords:   " + (", ".join(v.keywords) or "-"),
        "watch-lists: " + (", ".join(v.watchlists) or "none fired"),
    ]
    return "\n".join(lines)


def f1_table(pairs: Iterable[tuple[str, int, bool]]) -> list[tuple[str, int, float, float, float]]:
    """(group, n, precision, recall, F1) per language and overall from (lang, label, predicted)."""
    stats: dict[str, list[int]] = {}
    for lang, label, pred in pairs:
        for key in (lang, "all"):
            tp_fp_fn_n = stats.setdefault(key, [0, 0, 0, 0])
            tp_fp_fn_n[0] += bool(label and pred)
            tp_fp_fn_n[1] += bool(pred and not label)
            tp_fp_fn_n[2] += bool(label and not pred)
            tp_fp_fn_n[3] += 1
    table = []
    for key in sorted(stats, key=lambda k: (k == "all", k)):
        tp, fp, fn, n = stats[key]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        table.append((key, n, p, r, f))
    return table


def evaluate_lines(judge: Judge, stream: TextIO, out: TextIO, *, misses: int = 20) -> int:
    """Print P/R/F1 per language and overall, then up to ``misses`` misclassified items."""
    rows = [r for r in read_rows(stream) if r.article is not None and r.label is not None]
    if not rows:
        print('error: no readable lines with a "label" field', file=sys.stderr)
        return 1
    results = [(r, v) for r, v in judge_rows(judge, rows) if v is not None]
    pairs = [(v.lang, r.label or 0, v.escalation) for r, v in results]
    out.write(f"{'lang':6} {'n':>5} {'precision':>9} {'recall':>7} {'F1':>6}\n")
    for key, n, prec, rec, f1 in f1_table(pairs):
        out.write(f"{key:6} {n:5d} {prec:9.3f} {rec:7.3f} {f1:6.3f}\n")
    wrong = [(r, v) for r, v in results if bool(r.label) != v.escalation]
    out.write(f"\n{len(wrong)} misses" + (f" (first {misses}):\n" if wrong else "\n"))
    for r, v in wrong[:misses]:
        kind = "missed" if r.label else "false alarm"
        art = r.article
        if art is not None:
            out.write(f"  {kind:11} {v.lang} {v.score:.2f} {art.id}: {art.title[:100]}\n")
    return 0
