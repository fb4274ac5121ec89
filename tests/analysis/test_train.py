"""Training-data plumbing: the pool-label join, pool outlets, and the logistic head packing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.analysis.fit import Dataset, Recipe, cross_validate_extra, fit_logistic
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
