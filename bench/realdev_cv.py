"""Cross-validated realdev F1 of what `spillover classify` reports: the watch-list decision.

Usage: .venv/bin/python bench/realdev_cv.py [--data ../shared/data] [--repeats 6] [--also 0.46 0.5]

The head is cross-validated as `python -m monitor.analysis.train` fits it (5 folds on realdev,
the own rows and the labelled pool in every fold, the int8 path). Each out-of-fold probability
then goes through the product's Judge (regions, top signals, keywords, the watch-list's
min_score), so the figure is the `escalation` field's, not the head's alone. realdev has ~90
positives per language, so one item moves F1 by ~0.006: the fold assignment is repeated with
--repeats seeds (the first is the one train prints) and the mean and spread are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from monitor.analysis.classify import Classifier, Scored
    from monitor.config import Config
    from monitor.models import Article

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "ar")


class CrossValidated:
    """Stands in for the Classifier: the real signal scores, the out-of-fold probability."""

    def __init__(self, scored: list[Scored], probability: np.ndarray, threshold: float) -> None:
        self._scored = scored
        self._probability = probability
        self.threshold = threshold

    def score(self, texts: Sequence[str], langs: Sequence[str]) -> list[Scored]:
        if len(texts) != len(self._scored):
            raise ValueError("judge every realdev row in one call, in order")
        return [dataclasses.replace(s, score=float(p))
                for s, p in zip(self._scored, self._probability, strict=True)]


def main() -> int:
    """Print per-seed and mean P/R/F1 per language of the decision and of the head alone."""
    import structlog

    from monitor.analysis.classify import Classifier, Head
    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.fit import calibrated, prf
    from monitor.analysis.train import (
        POOL_LABELS,
        REGION_GATE,
        EmbeddingCache,
        Recipe,
        _load_sets,
        calibrate,
        cross_validate,
        gate_factor,
        row_text,
    )
    from monitor.config import load_config
    from monitor.models import Article
    from monitor.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--also", type=float, nargs="*", default=[],
                        help="other min_score values to judge the same CV scores at, e.g. 0.46 0.5")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    head = Head.load()
    encoder = load_encoder(load_settings(), variant="int8")
    cache = EmbeddingCache(encoder, REPO / ".cache" / "train", "int8",
                           head.taps or (encoder.layers,))
    sets = _load_sets(argparse.Namespace(data=args.data, labels=POOL_LABELS, no_pool=True,
                                         seed=Recipe.seed), cache)
    dev = sets.dev
    config = load_config(REPO / "config")
    classifier = Classifier(encoder, config.signals, head)
    articles = [Article(id=str(r["id"]), feed="realdev", feed_url="",
                        title=str(r.get("title") or ""), summary=str(r.get("summary") or ""),
                        lang_hint=str(r["lang"])).model_copy(update={"lang": str(r["lang"])})
                for r in dev.rows]
    if [a.text for a in articles] != [row_text(r) for r in dev.rows]:
        raise SystemExit("Article.text and train.row_text disagree; the figures would mislead")
    scored = classifier.score([a.text for a in articles], [str(lang) for lang in dev.langs])
    min_score = next(w.min_score for w in config.watchlists if w.name == "middle-east")
    print(f"realdev {len(dev.y)} rows; default watch-list min_score {min_score:.2f}; "
          f"head threshold {head.threshold:.2f}")
    print(f"{'seed':>9} " + " ".join(f"{g + ' decision P/R/F1':>23}" for g in LANGS)
          + " " + " ".join(f"{g + ' head F1':>11}" for g in LANGS))
    rows: list[list[float]] = []
    others: dict[float, list[list[float]]] = {m: [] for m in args.also}
    for seed in [Recipe.seed, *range(1, args.repeats)]:
        logits = cross_validate(dev, sets.own, None, Recipe(seed=seed), extra=sets.labelled)
        p = calibrated(calibrate(logits, dev.y, dev.langs), logits, dev.langs)
        p = p * gate_factor(dev, REGION_GATE)
        stand_in = cast(Classifier, CrossValidated(scored, p, head.threshold))
        escalation = _decisions(stand_in, config, articles)
        decision = [prf(dev.y[dev.langs == g], escalation[dev.langs == g]) for g in LANGS]
        alone = [prf(dev.y[dev.langs == g], p[dev.langs == g] >= min_score)[2] for g in LANGS]
        rows.append([d[2] for d in decision] + alone)
        print(f"{seed:>9} " + " ".join(f"{d[0]:.3f}/{d[1]:.3f}/{d[2]:.3f}".rjust(23)
                                       for d in decision)
              + " " + " ".join(f"{f:11.3f}" for f in alone))
        for other, got in others.items():
            moved = _decisions(stand_in, _with_min_score(config, other), articles)
            got.append([prf(dev.y[dev.langs == g], moved[dev.langs == g])[2] for g in LANGS])
    table = np.array(rows)
    mean, sd = table.mean(axis=0), table.std(axis=0)
    print(f"{'mean':>9} " + " ".join(f"F1 {m:.3f} ± {s:.3f}".rjust(23)
                                     for m, s in zip(mean[:2], sd[:2], strict=True))
          + " " + " ".join(f"{m:11.3f}" for m in mean[2:]))
    for other, got in others.items():
        table = np.array(got)
        print(f"decision at min_score {other:.2f}: " + ", ".join(
            f"{g} F1 {m:.3f} ± {s:.3f}" for g, m, s
            in zip(LANGS, table.mean(axis=0), table.std(axis=0), strict=True)))
    return 0


def _decisions(classifier: Classifier, config: Config, articles: list[Article]) -> np.ndarray:
    """The default watch-list's ``escalation`` for every article, as the daemon decides it."""
    from monitor.analysis.match import Matcher
    from monitor.analyze import Judge

    judge = Judge(classifier, Matcher(config), config)
    return np.array([j.verdict.escalation for j in judge.judge(articles)])


def _with_min_score(config: Config, min_score: float) -> Config:
    """The config with the default watch-list's min_score replaced."""
    lists = tuple(w.model_copy(update={"min_score": min_score}) if w.name == "middle-east"
                  else w for w in config.watchlists)
    return dataclasses.replace(config, watchlists=lists)


if __name__ == "__main__":
    raise SystemExit(main())
