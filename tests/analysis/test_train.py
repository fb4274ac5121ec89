"""Training plumbing: the pool-label join, pool outlets, head packing and per-view ensembles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.analysis.fit import (
    Dataset,
    Recipe,
    choose_threshold,
    cross_validate_extra,
    fit_head,
    fit_logistic,
)
from monitor.analysis.train import _outlet, join_pool_labels, select_pool
from monitor.errors import ModelError

POOL = [
    {"id": "ar-ant-1", "lang": "ar", "title": "قصف على إدلب", "summary": "", "label": None},
    {"id": "en-rss-aj20231010-001", "lang": "en", "title": "Strike on Gaza", "summary": "s",
     "label": None},
    {"id": "en-rss-bbc20230101-002", "lang": "en", "title": "UK budget", "summary": "",
     "label": None},
]


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write each item as one line (dicts as JSON, strings verbatim)."""
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x)
                            + "\n" for x in lines), encoding="utf-8")
    return path


def test_join_takes_text_from_pool_and_labels_from_file(tmp_path: Path) -> None:
    """Joined rows carry the pool's text and the file's label, signal and region."""
    labels = write_lines(tmp_path / "l.jsonl", [
        {"id": "en-rss-aj20231010-001", "lang": "en", "label": 1, "signal": "air-strike",
         "region": "gaza"},
        {"id": "ar-ant-1", "lang": "ar", "label": 0, "signal": None, "region": "syria"},
    ])
    rows = join_pool_labels(labels, POOL)
    assert [(r["id"], r["label"], r["title"]) for r in rows] == [
        ("en-rss-aj20231010-001", 1, "Strike on Gaza"), ("ar-ant-1", 0, "قصف على إدلب")]
    assert rows[0]["signal"] == "air-strike" and rows[1]["region"] == "syria"


def test_join_skips_null_labels(tmp_path: Path) -> None:
    """An ambiguous (null) label is left out of training rather than forced."""
    labels = write_lines(tmp_path / "l.jsonl", [
        {"id": "ar-ant-1", "lang": "ar", "label": None, "signal": None, "region": "syria"},
        {"id": "en-rss-bbc20230101-002", "lang": "en", "label": 0, "signal": None,
         "region": "other"},
    ])
    assert [r["id"] for r in join_pool_labels(labels, POOL)] == ["en-rss-bbc20230101-002"]


@pytest.mark.parametrize(("line", "message"), [
    ({"id": "en-rss-aj20990101-009", "lang": "en", "label": 1}, "not in pool.jsonl"),
    ({"id": "ar-ant-1", "lang": "en", "label": 0}, "lang 'en' but pool.jsonl says 'ar'"),
    ({"id": "ar-ant-1", "lang": "ar", "label": 2}, "label must be 0, 1 or null"),
    ({"id": "ar-ant-1", "lang": "ar", "label": True}, "label must be 0, 1 or null"),
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_join_rejects_bad_line_naming_file_and_line(
    tmp_path: Path, line: Any, message: str
) -> None:
    """A bad label line fails with the file, its line number and what is wrong."""
    ok = {"id": "en-rss-bbc20230101-002", "lang": "en", "label": 0}
    labels = write_lines(tmp_path / "l.jsonl", [ok, "", line])
    with pytest.raises(ModelError, match=rf"l\.jsonl:3: .*{message}"):
        join_pool_labels(labels, POOL)


def test_join_rejects_a_repeated_id(tmp_path: Path) -> None:
    """Labelling an item twice is an error at the second line, not a silent double weight."""
    line = {"id": "ar-ant-1", "lang": "ar", "label": 1, "signal": "air-strike"}
    labels = write_lines(tmp_path / "l.jsonl", [line, line])
    with pytest.raises(ModelError, match=r"l\.jsonl:2: id 'ar-ant-1' is labelled twice"):
        join_pool_labels(labels, POOL)


@pytest.mark.parametrize(("row_id", "outlet"), [
    ("en-rss-arabnews20231125-003", "arabnews"),
    ("en-rss-bbch20230101-001", "bbc"),
    ("en-rss-skys20230101-002", "sky"),
    ("en-rss-nytworld20230505-007", "nytworld"),
    ("ar-ant-123", "ar"),
    ("en-agnews-train-3", "agnews"),
])
def test_outlet_of_pool_ids(row_id: str, outlet: str) -> None:
    """Outlet codes keep their last letter; the http/https h/s suffix is dropped."""
    assert _outlet(row_id) == outlet


def test_select_pool_draws_arab_news_items() -> None:
    """The arabnews quota selects Arab News items (it used to select none)."""
    rows = [{"id": f"en-rss-arabnews2023010{k}-00{k}", "lang": "en"} for k in range(1, 4)]
    chosen = select_pool(rows, seed=1)
    assert sorted(r["id"] for r in chosen) == sorted(r["id"] for r in rows)


def _toy(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    x = np.hstack([emb, rng.random((n, 4)).astype(np.float32)])
    y = (emb[:, 0] + 0.3 * x[:, -2] > 0.1).astype(np.int64)
    return Dataset(x, y, np.array(["en", "ar"] * (n // 2)))


def test_logistic_head_reproduces_the_logistic_model() -> None:
    """The logistic model packed as ReLU units gives sklearn's own decision function."""
    from sklearn.linear_model import LogisticRegression

    data = _toy(60, 0)
    head = fit_logistic(data.x, data.y, np.ones(60, np.float32), Recipe(c=2.0))
    scaled = np.hstack([data.x[:, :-4] * 10, data.x[:, -4:] * 3])
    reference = LogisticRegression(C=2.0, max_iter=2000).fit(scaled, data.y)
    assert np.allclose(head.logits(data.x), reference.decision_function(scaled), atol=1e-3)


def test_pool_cross_validation_scores_every_labelled_row_once() -> None:
    """Labelled-pool CV returns one out-of-fold logit per row, separating the toy classes."""
    dev, own, extra = _toy(40, 1), _toy(10, 2), _toy(60, 3)
    logits = cross_validate_extra(dev, own, None, Recipe(model="logistic", c=4.0), extra)
    assert logits.shape == (60,)
    assert logits[extra.y == 1].mean() > logits[extra.y == 0].mean()


# 300 Adam steps on a toy set need not converge; the packing is what is checked here.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_views_each_fit_members_on_their_own_taps() -> None:
    """A two-view head is the average of the heads fitted on each view's columns alone."""
    data = _toy(80, 4)  # 8 embedding columns: hidden states 3 and 7, 4 wide each
    weights = np.ones(80, np.float32)
    both = fit_head(data, weights, Recipe(members=2, hidden=8, taps=(3, 7), views=((3,), (7,))))
    assert both.w1.shape == (4, 12, 8)
    assert not both.w1[:2, 4:8].any() and not both.w1[2:, 0:4].any()  # each reads its taps
    assert both.w1[:2, 8:].any() and both.w1[2:, 8:].any()  # and the region columns
    alone = []
    for cols in (np.r_[0:4, 8:12], np.r_[4:12]):
        view = Dataset(data.x[:, cols], data.y, data.langs)
        head = fit_head(view, weights, Recipe(members=2, hidden=8, views=()))
        alone.append(head.logits(data.x[:, cols]))
    np.testing.assert_allclose(both.logits(data.x), np.mean(alone, axis=0), atol=1e-5)


def test_views_naming_taps_the_features_lack_fail_clearly() -> None:
    """Features that do not hold the recipe's taps raise ModelError saying what to do."""
    data = _toy(20, 5)
    with pytest.raises(ModelError, match=r"12 columns.*hidden states \[3, 7, 9\].*Recipe"):
        fit_head(data, np.ones(20, np.float32), Recipe(taps=(3, 7, 9), views=((3, 9),)))
    with pytest.raises(ModelError, match=r"views \[\(3, 5\)\]"):
        fit_head(data, np.ones(20, np.float32), Recipe(taps=(3, 7), views=((3, 5),)))


def _scores(cuts: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores per group: positives at the listed scores, each with a negative just below it."""
    p, y, g = [], [], []
    for group, values in cuts.items():
        for v in values:
            p += [v, v - 0.011]
            y += [1, 0]
            g += [group, group]
    return np.array(p, np.float32), np.array(y), np.array(g)


def test_threshold_prefers_a_broad_optimum_to_a_lone_spike() -> None:
    """A threshold that is best alone but flanked by poor ones loses to a broad optimum."""
    at = {0.305: (10, 0), 0.295: (0, 10), 0.59: (0, 8), 0.695: (8, 0), 0.95: (200, 0),
          0.05: (0, 200)}  # score: (positives, negatives)
    p = np.array([v for v, (pos, neg) in at.items() for _ in range(pos + neg)], np.float32)
    y = np.array([1 if k < pos else 0 for pos, neg in at.values() for k in range(pos + neg)])
    langs = np.array(["en"] * len(y))
    errors = {t: int(np.sum((p >= t) != (y == 1))) for t in (0.28, 0.30, 0.32, 0.62, 0.70)}
    assert errors == {0.28: 18, 0.30: 8, 0.32: 18, 0.62: 10, 0.70: 18}  # 0.30 alone is best
    assert choose_threshold(p, y, langs) == 0.62


def test_threshold_ties_go_to_the_guard_set_then_the_lowest() -> None:
    """Equal on the main set, the threshold the guard set scores best wins; else the lowest."""
    p, y, langs = _scores({"en": [0.9] * 4, "ar": [0.9] * 4})  # flat from 0.2 to 0.88
    assert choose_threshold(p, y, langs) == 0.2
    guard = _scores({"en": [0.7, 0.7], "ar": [0.7]})
    guard = (np.r_[guard[0], [0.5, 0.5]], np.r_[guard[1], [0, 0]], np.r_[guard[2], ["en", "ar"]])
    assert choose_threshold(p, y, langs, guard=guard) == 0.52
