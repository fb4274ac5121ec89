"""Precision, recall and F1 of escalation probabilities against labels, per language."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.analysis.fit import prf

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Report:
    """P/R/F1 per language and overall, and the misclassified rows."""

    threshold: float
    groups: dict[str, dict[str, float]]
    misses: list[dict[str, Any]]


def evaluate(rows: Sequence[Mapping[str, Any]], predictions: Sequence[float],
             threshold: float = 0.5) -> Report:
    """Compare escalation probabilities with the rows' ``label`` (``lang`` groups them)."""
    if len(rows) != len(predictions):
        raise ValueError(f"{len(rows)} rows but {len(predictions)} predictions")
    y = np.array([int(r["label"]) for r in rows])
    langs = np.array([str(r.get("lang", "other")) for r in rows])
    p = np.asarray(predictions, dtype=np.float32)
    groups = {}
    for lang in [*sorted(set(langs.tolist())), "all"]:
        mask = np.ones(len(y), bool) if lang == "all" else langs == lang
        prec, rec, f1 = prf(y[mask], p[mask] >= threshold)
        groups[lang] = {"n": float(mask.sum()), "precision": prec, "recall": rec, "f1": f1,
                        "mean_pos": _mean(p[mask & (y == 1)]),
                        "mean_neg": _mean(p[mask & (y == 0)])}
    misses = [{"id": r.get("id", ""), "lang": r.get("lang"), "label": int(r["label"]),
               "score": float(s), "title": str(r.get("title", ""))}
              for r, s in zip(rows, p, strict=True) if (s >= threshold) != bool(r["label"])]
    return Report(threshold, groups, misses)


def _mean(a: Array) -> float:
    return float(a.mean()) if len(a) else float("nan")


def format_report(report: Report, misses: int = 20) -> str:
    """A printable table of the report, then up to ``misses`` misclassified rows."""
    lines = [f"threshold {report.threshold:.2f}",
             f"{'lang':5} {'n':>4} {'P':>6} {'R':>6} {'F1':>6} {'mean+':>6} {'mean-':>6}"]
    for lang, g in report.groups.items():
        lines.append(f"{lang:5} {int(g['n']):4d} {g['precision']:6.3f} {g['recall']:6.3f} "
                     f"{g['f1']:6.3f} {g['mean_pos']:6.3f} {g['mean_neg']:6.3f}")
    for m in report.misses[:misses]:
        kind = "missed" if m["label"] else "false alarm"
        lines.append(f"  {kind:11} {m['lang']} {m['score']:.2f} {m['id']}: {m['title'][:90]}")
    return "\n".join(lines)
