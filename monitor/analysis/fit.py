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
from monitor.errors import ModelError

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
    ``taps`` names the encoder hidden states whose embeddings precede the 4 region features,
    in column order; ``views`` are groups of them: each view gets its own ``members``, reading
    only its taps (and the region features), and the head averages all of them. No views: the
    members read every column.
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
    # Layer 10 beside the last (the best single view), plus 11 and 8 beside the last: the
    # three-view average raised the worst-language CV F1 on realdev and on the labelled pool
    # (/work/notes/closing-note-6.md); bench/head_layers.py compares the single views.
    taps: tuple[int, ...] = (8, 10, 11, 12)
    views: tuple[tuple[int, ...], ...] = ((10, 12), (11, 12), (8, 12))


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


REGION_COLUMNS = 4  # region_features() after the embeddings


def view_columns(width: int, recipe: Recipe) -> list[npt.NDArray[np.int64]]:
    """Feature columns each view reads: its taps' embedding blocks, then the region features."""
    everything = np.arange(width)
    if not recipe.views:
        return [everything]
    dim, rest = divmod(width - REGION_COLUMNS, len(recipe.taps) or 1)
    missing = sorted({n for view in recipe.views for n in view} - set(recipe.taps))
    if rest or not recipe.taps or missing:
        raise ModelError(
            f"features of {width} columns do not hold the hidden states {list(recipe.taps)} "
            f"(+{REGION_COLUMNS} region columns) that views {list(recipe.views)} read; embed "
            "the taps the recipe names, or fit with Recipe(views=())")
    regions = everything[width - REGION_COLUMNS:]
    return [np.concatenate([*(everything[recipe.taps.index(n) * dim:][:dim] for n in view),
                            regions]) for view in recipe.views]


def _widen(member: Member, cols: npt.NDArray[np.int64], width: int) -> Member:
    """A member fitted on some columns as one reading all: zero weights elsewhere."""
    w1 = np.zeros((width, member[0].shape[1]), np.float32)
    w1[cols] = member[0]
    return w1, member[1], member[2], member[3]


def fit_head(train: Dataset, weights: Array, recipe: Recipe) -> Head:
    """Uncalibrated head (identity calibration) fitted on labelled rows, one ensemble per view."""
    if recipe.model == "logistic":
        return fit_logistic(train.x, train.y, weights, recipe)
    mean, scale = _standardise(train.x)
    width, members = train.x.shape[1], []
    for cols in view_columns(width, recipe):
        fitted = fit_members(train.x[:, cols], train.y, weights, recipe, mean[cols], scale[cols])
        members += [_widen(m, cols, width) for m in fitted]
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


# Smoothed worst-language F1 counted as a tie: about a third of one realdev item's step.
TIE = 0.002
Scores = tuple[Array, Labels, npt.NDArray[np.str_]]  # probabilities, labels, groups


def _worst_f1(scores: Scores, threshold: float) -> float:
    p, y, groups = scores
    return min(prf(y[groups == g], p[groups == g] >= threshold)[2]
               for g in sorted(set(groups.tolist())))


def choose_threshold(p: Array, y: Labels, langs: npt.NDArray[np.str_],
                     guard: Scores | None = None) -> float:
    """The threshold with the best worst-group F1, smoothed over its neighbours.

    Candidates run 0.20..0.80 in steps of 0.02. Each scores the worst F1 over the groups of
    ``langs`` (the languages), averaged with the candidates either side, so one item
    crossing does not decide. Among candidates within TIE of the best, the one with the best
    worst-group F1 on ``guard`` (out-of-fold scores of a second labelled set: the labelled
    pool) wins, then the lowest: a duty desk would rather dismiss an alert than miss one.
    The guard only breaks ties: the labelled pool's English items were picked where a model
    was unsure, so they would pull the threshold wherever the hardest items lie.
    """
    candidates = [round(float(t), 2) for t in np.arange(0.2, 0.81, 0.02)]
    worst = np.array([_worst_f1((p, y, langs), t) for t in candidates])
    smooth = np.convolve(np.pad(worst, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    near = [t for t, f in zip(candidates, smooth, strict=True) if f >= smooth.max() - TIE]
    if guard is not None:
        held = {t: _worst_f1(guard, t) for t in near}
        near = [t for t in near if held[t] >= max(held.values())]
    return min(near)
