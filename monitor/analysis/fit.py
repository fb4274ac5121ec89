"""Fitting the classifier head: seeded MLP or logistic ensembles, pseudo-labels, CV, calibration.

Used by monitor.analysis.train (which re-exports these names); needs scikit-learn (dev extra).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from monitor.analysis.classify import Head

log = structlog.get_logger(__name__)

Array = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass
class Dataset:
    """Features, labels and languages of one labelled or unlabelled set."""

    x: Array
    y: Labels
    langs: npt.NDArray[np.str_]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Recipe:
    """How the head is fitted: the knobs compared in /work/notes/classifier/RESULTS.md.

    ``model`` is "mlp" (ensemble on standardised features) or "logistic" (one logistic
    regression on [10 x embedding, 3 x gazetteer], packed into the same Head form).
    ``labelled_weight`` weighs the hand-labelled pool rows (tests/data/pool_labels.jsonl).
    """

    hidden: int = 64
    alpha: float = 1e-2
    members: int = 5
    pseudo_pos: float = 0.9
    pseudo_neg: float = 0.05
    pseudo_weight: float = 0.5
    own_weight: float = 1.0
    labelled_weight: float = 1.0
    model: str = "mlp"
    c: float = 4.0
    seed: int = 20240601


Member = tuple[Array, Array, Array, float]  # w1 (d,h), b1 (h,), w2 (h,), b2


def _standardise(x: Array) -> tuple[Array, Array]:
    return x.mean(axis=0).astype(np.float32), (x.std(axis=0) + 1e-6).astype(np.float32)


def fit_members(x: Array, y: Labels, w: Array, recipe: Recipe,
                mean: Array, scale: Array) -> list[Member]:
    """A seeded ensemble of one-hidden-layer MLPs on standardised features."""
    from sklearn.neural_network import MLPClassifier

    members: list[Member] = []
    z = (x - mean) / scale
    for k in range(recipe.members):
        mlp = MLPClassifier((recipe.hidden,), alpha=recipe.alpha, max_iter=300,
                            random_state=recipe.seed + k, early_stopping=False)
        mlp.fit(z, y, sample_weight=w)
        (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
        members.append((w1.astype(np.float32), b1.astype(np.float32),
                        w2[:, 0].astype(np.float32), float(b2[0])))
    return members


def to_head(members: Sequence[Member], mean: Array, scale: Array,
            calibration: Mapping[str, tuple[float, float]], threshold: float = 0.5,
            signal_centre: float = 0.86, signal_width: float = 0.02) -> Head:
    """Pack ensemble members into the numpy-only Head the daemon loads."""
    return Head(
        mean=mean, scale=scale,
        w1=np.stack([m[0] for m in members]), b1=np.stack([m[1] for m in members]),
        w2=np.stack([m[2] for m in members]),
        b2=np.array([m[3] for m in members], dtype=np.float32),
        calibration=dict(calibration), threshold=threshold,
        signal_centre=signal_centre, signal_width=signal_width,
    )


def logistic_scale(dim: int) -> Array:
    """Feature scale of the logistic model: embeddings x10, the 4 gazetteer features x3."""
    return np.concatenate([np.full(dim - 4, 0.1), np.full(4, 1 / 3)]).astype(np.float32)


def fit_logistic(x: Array, y: Labels, w: Array, recipe: Recipe) -> Head:
    """Logistic regression as a 2-unit ReLU layer: relu(z) - relu(-z) == z exactly."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = np.zeros(x.shape[1], np.float32), logistic_scale(x.shape[1])
    model = LogisticRegression(C=recipe.c, max_iter=2000).fit(x / scale, y, sample_weight=w)
    coef, bias = model.coef_[0].astype(np.float32), float(model.intercept_[0])
    member = (np.stack([coef, -coef], axis=1), np.array([bias, -bias], np.float32),
              np.array([1.0, -1.0], np.float32), 0.0)
    return to_head([member], mean, scale, {"all": (1.0, 0.0)})


def fit_head(train: Dataset, weights: Array, recipe: Recipe) -> Head:
    """Uncalibrated head (identity calibration) fitted on labelled rows."""
    if recipe.model == "logistic":
        return fit_logistic(train.x, train.y, weights, recipe)
    mean, scale = _standardise(train.x)
    members = fit_members(train.x, train.y, weights, recipe, mean, scale)
    return to_head(members, mean, scale, {"all": (1.0, 0.0)})


def pseudo_label(teacher: Head, pool: Dataset, recipe: Recipe) -> tuple[Dataset, Array]:
    """The pool rows the teacher is confident about, with its labels and a lower weight."""
    p = teacher.probability(pool.x, list(pool.langs))
    keep = (p >= recipe.pseudo_pos) | (p <= recipe.pseudo_neg)
    labels = (p[keep] >= recipe.pseudo_pos).astype(np.int64)
    weights = np.full(int(keep.sum()), recipe.pseudo_weight, dtype=np.float32)
    return Dataset(pool.x[keep], labels, pool.langs[keep]), weights


def _concat(parts: Sequence[tuple[Dataset, Array]]) -> tuple[Dataset, Array]:
    data = Dataset(np.vstack([d.x for d, _ in parts]), np.concatenate([d.y for d, _ in parts]),
                   np.concatenate([d.langs for d, _ in parts]))
    return data, np.concatenate([w for _, w in parts]).astype(np.float32)


def fit_student(labelled: Dataset, own: Dataset, pool: Dataset | None, recipe: Recipe,
                extra: Dataset | None = None) -> Head:
    """Teacher on labelled rows (+ extra, weighted); then a student adding confident pool rows."""
    parts = [(labelled, np.ones(len(labelled.y), np.float32)),
             (own, np.full(len(own.y), recipe.own_weight, np.float32))]
    if extra is not None and len(extra.y):
        parts.append((extra, np.full(len(extra.y), recipe.labelled_weight, np.float32)))
    if pool is not None and recipe.pseudo_weight > 0:
        base, weights = _concat(parts)
        teacher = fit_head(base, weights, replace(recipe, members=3))
        parts.append(pseudo_label(teacher, pool, recipe))
    data, weights = _concat(parts)
    return fit_head(data, weights, recipe)


def subset(data: Dataset, idx: npt.NDArray[np.int64]) -> Dataset:
    """The rows idx of a dataset (rows kept when present)."""
    rows = [data.rows[i] for i in idx] if data.rows else []
    return Dataset(data.x[idx], data.y[idx], data.langs[idx], rows)


def _folds(data: Dataset, folds: int, seed: int) -> list[tuple[Any, Any]]:
    from sklearn.model_selection import StratifiedKFold

    strata = np.char.add(data.langs.astype(str), data.y.astype(str))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(data.x, strata))


def cross_validate(dev: Dataset, own: Dataset, pool: Dataset | None, recipe: Recipe,
                   folds: int = 5, extra: Dataset | None = None) -> Array:
    """Out-of-fold raw logits on dev, stratified by language x label.

    Pseudo-labels are redrawn per fold; ``extra`` (the labelled pool, never in dev) joins
    every fold's training set.
    """
    logits = np.zeros(len(dev.y), dtype=np.float32)
    for fold, (tr, te) in enumerate(_folds(dev, folds, recipe.seed)):
        head = fit_student(subset(dev, tr), own, pool, recipe, extra)
        logits[te] = head.logits(dev.x[te])
        log.info("fold_done", fold=fold)
    return logits


def cross_validate_extra(dev: Dataset, own: Dataset, pool: Dataset | None, recipe: Recipe,
                         extra: Dataset, folds: int = 5) -> Array:
    """Out-of-fold raw logits on the labelled pool, training on dev + the other pool folds."""
    logits = np.zeros(len(extra.y), dtype=np.float32)
    for tr, te in _folds(extra, folds, recipe.seed):
        head = fit_student(dev, own, pool, recipe, subset(extra, tr))
        logits[te] = head.logits(extra.x[te])
    return logits


def calibrate(logits: Array, y: Labels, langs: npt.NDArray[np.str_],
              ) -> dict[str, tuple[float, float]]:
    """Platt scaling per language (and pooled as 'all') so a score means the same in both."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for lang in [*sorted(set(langs.tolist())), "all"]:
        mask = np.ones(len(y), bool) if lang == "all" else langs == lang
        platt = LogisticRegression(C=1e4, max_iter=1000).fit(logits[mask, None], y[mask])
        out[lang] = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    return out


def calibrated(calibration: Mapping[str, tuple[float, float]], logits: Array,
               langs: npt.NDArray[np.str_]) -> Array:
    """Probabilities from raw logits through the per-language Platt calibration."""
    ab = np.array([calibration.get(str(lang), calibration["all"]) for lang in langs])
    return np.asarray(1 / (1 + np.exp(-(ab[:, 0] * logits + ab[:, 1]))), dtype=np.float32)


def prf(y: npt.NDArray[Any], pred: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """Precision, recall and F1 of boolean predictions against 0/1 labels."""
    tp = int(np.sum(pred & (y == 1)))
    fp, fn = int(np.sum(pred & (y != 1))), int(np.sum(~pred & (y == 1)))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


RECALL_SLACK = 0.01  # F1 given up, at most, for the lowest threshold (fewer missed escalations)


def choose_threshold(p: Array, y: Labels, langs: npt.NDArray[np.str_]) -> float:
    """The lowest threshold whose worst-group F1 is within RECALL_SLACK of the best one.

    Groups are the distinct values of ``langs``: the languages, or e.g. "dev:en" and
    "pool:ar" when out-of-fold scores of two labelled sets are pooled. F1 is flat near its
    optimum; there a duty desk would rather dismiss an alert than miss an escalation.
    """
    groups = sorted(set(langs.tolist()))
    candidates = [round(float(t), 2) for t in np.arange(0.2, 0.81, 0.02)]
    worst = {t: min(prf(y[langs == g], p[langs == g] >= t)[2] for g in groups)
             for t in candidates}
    best = max(worst.values())
    return min(t for t in candidates if worst[t] >= best - RECALL_SLACK)
