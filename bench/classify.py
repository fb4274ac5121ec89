"""Classifier throughput, peak memory and cross-validated realdev F1 for the fp32 and int8 paths.

Usage: .venv/bin/python bench/classify.py [--data ../shared/data]

Each variant runs in its own subprocess so its peak RSS is its own. Timing texts are the
project's own title + summary examples (tests/data/escalation_en_ar.jsonl, ~3,900 of them,
71 tokens on average, 4:3 Arabic:English; batch 1 takes every 16th), scored by the daemon's
Classifier with the shipped head; peak RSS is read right after timing (the classify path),
before the F1 part loads sklearn and holds datasets; score drift compares each batch-1 text's
probability with its probability inside its batch of 32. F1 is cross-validated the same way for
both variants, as the shipped head is trained (5 folds on realdev, with the own rows and the
labelled pool items in every fold's training set): each variant embeds realdev.jsonl and
pool.jsonl's labelled items (never copied into the repository) and the own rows itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "ar", "all")


def peak_rss_mb() -> float:
    """ru_maxrss of this process (KiB on Linux) in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing(variant: str) -> tuple[Any, dict[str, float]]:
    """Load the encoder and classifier, score the own examples at batch 1 and 32."""
    from monitor.analysis.classify import Classifier, Head
    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.train import OWN_DATA, load_signals, read_jsonl, row_text
    from monitor.settings import load_settings

    started = time.perf_counter()
    encoder = load_encoder(load_settings(), variant=variant)
    clf = Classifier(encoder, load_signals(REPO / "config" / "signals.yaml"), Head.load())
    load_s = time.perf_counter() - started
    # title + summary items (the written ones with a summary), as feeds deliver them
    rows = [r for r in read_jsonl(OWN_DATA) if r.get("summary")]
    texts, langs = [row_text(r) for r in rows], [str(r["lang"]) for r in rows]
    clf.score(texts[:4], langs[:4])  # warm-up
    started = time.perf_counter()
    alone = [clf.score([text], [lang])[0].score
             for text, lang in zip(texts[::16], langs[::16], strict=True)]
    batch1 = len(texts[::16]) / (time.perf_counter() - started)
    started = time.perf_counter()
    batched = [s.score for i in range(0, len(texts), 32)
               for s in clf.score(texts[i : i + 32], langs[i : i + 32])]
    batch32 = len(texts) / (time.perf_counter() - started)
    # the same text scored alone and inside a batch of 32: how far its probability moves
    drift = np.abs(np.array(alone) - np.array(batched[::16]))
    return encoder, {"load_s": load_s, "batch1": batch1, "batch32": batch32,
                     "peak_rss_mb": peak_rss_mb(), "drift_max": float(drift.max()),
                     "drift_mean": float(drift.mean())}


def embed_sets(encoder: Any, data: Path, *, dev_only: bool = False) -> tuple[Any, Any, Any]:
    """realdev, the own training rows and the labelled pool (None without pool.jsonl), embedded
    with this encoder at the hidden states the shipped head reads (only realdev if dev_only)."""
    from monitor.analysis.classify import MAX_LENGTH, PREFIX, Head
    from monitor.analysis.train import (
        OWN_DATA,
        POOL_LABELS,
        _split_own,
        join_pool_labels,
        make_dataset,
        read_jsonl,
        row_text,
    )

    taps = Head.load().taps or (encoder.layers,)

    def embed(rows: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray(encoder.embed_layers([row_text(r) for r in rows], taps,
                                               prefix=PREFIX, max_length=MAX_LENGTH))

    dev_rows, own_rows = read_jsonl(data / "realdev.jsonl"), read_jsonl(OWN_DATA)
    dev = make_dataset(dev_rows, embed(dev_rows))
    if dev_only:
        return dev, None, None
    own, _held_out = _split_own(own_rows, embed(own_rows))
    labelled = None
    if (data / "pool.jsonl").exists():  # the shipped recipe trains on the labelled pool too
        lab_rows = join_pool_labels(POOL_LABELS, read_jsonl(data / "pool.jsonl"))
        labelled = make_dataset(lab_rows, embed(lab_rows))
    return dev, own, labelled


def report(dev: Any, logits: np.ndarray, calibration: dict[str, tuple[float, float]],
           threshold: float | None = None) -> dict[str, Any]:
    """P/R/F1 per language of calibrated, region-gated logits (threshold chosen if None)."""
    from monitor.analysis.fit import calibrated
    from monitor.analysis.train import REGION_GATE, choose_threshold, evaluate, gate_factor

    p = calibrated(calibration, logits, dev.langs) * gate_factor(dev, REGION_GATE)
    threshold = choose_threshold(p, dev.y, dev.langs) if threshold is None else threshold
    groups = evaluate(dev.rows, p.tolist(), threshold).groups
    return {"threshold": threshold, "groups": {k: groups[k] for k in LANGS}}


def cv_f1(sets: tuple[Any, Any, Any]) -> dict[str, Any]:
    """Cross-validated P/R/F1 per language on realdev, trained on this encoder's embeddings."""
    from monitor.analysis.train import Recipe, calibrate, cross_validate

    dev, own, labelled = sets
    logits = cross_validate(dev, own, None, Recipe(), extra=labelled)
    return report(dev, logits, calibrate(logits, dev.y, dev.langs))


def as_shipped(fast: tuple[Any, Any, Any], data: Path) -> dict[str, Any]:
    """The daemon's case: each fold's head trained on int8 embeddings (as the shipped head is),
    scoring that fold with int8 and with fp32 embeddings; one calibration, the shipped threshold."""
    from monitor.analysis.classify import Head
    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.fit import _folds, fit_student, subset
    from monitor.analysis.train import Recipe, calibrate
    from monitor.settings import load_settings

    dev, own, labelled = fast
    ref = embed_sets(load_encoder(load_settings(), variant="fp32"), data, dev_only=True)[0]
    recipe = Recipe()
    opt, other = np.zeros(len(dev.y), np.float32), np.zeros(len(dev.y), np.float32)
    for train, test in _folds(dev, 5, recipe.seed):
        head = fit_student(subset(dev, train), own, None, recipe, labelled)
        opt[test], other[test] = head.logits(dev.x[test]), head.logits(ref.x[test])
    calibration = calibrate(opt, dev.y, dev.langs)
    threshold = Head.load().threshold  # the shipped one (train.main also weighs the pool)
    return {"fp32": report(dev, other, calibration, threshold),
            "int8": report(dev, opt, calibration, threshold)}


def child(variant: str, data: Path) -> dict[str, Any]:
    """Measure one variant in this process and return its figures."""
    import structlog

    structlog.configure(  # the train helpers log per fold; keep stdout for the JSON line
        wrapper_class=structlog.make_filtering_bound_logger(40))
    encoder, out = timing(variant)
    result: dict[str, Any] = {"variant": variant, **out}
    if (data / "realdev.jsonl").exists():
        sets = embed_sets(encoder, data)
        result["cv"] = cv_f1(sets)
        result["peak_rss_with_f1_mb"] = peak_rss_mb()
        if variant == "int8":
            result["shipped"] = as_shipped(sets, data)
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    """Speed/memory table, then CV P/R/F1 per language per variant and the int8 - fp32 gap."""
    print(f"{'variant':8} {'load s':>7} {'b1 t/s':>7} {'b32 t/s':>8} {'peak RSS MB':>12}"
          f" {'(+F1 part)':>11} {'score drift max/mean':>21}")
    for r in results:
        print(f"{r['variant']:8} {r['load_s']:7.1f} {r['batch1']:7.1f} {r['batch32']:8.1f}"
              f" {r['peak_rss_mb']:12.0f} {r.get('peak_rss_with_f1_mb', float('nan')):11.0f}"
              f" {r['drift_max']:13.4f}/{r['drift_mean']:.4f}")
    print("(score drift: |probability alone - probability in a batch of 32| of the same texts)")
    if not all("cv" in r for r in results):
        print("no realdev.jsonl under --data: F1 skipped")
        return
    print("\ncross-validated on realdev (5 folds, lang x label, + labelled pool; threshold "
          "chosen per variant on realdev)")
    print(f"{'variant':8} {'thr':>5} " + " ".join(f"{k + ' P/R/F1':>20}" for k in LANGS))
    for r in results:
        cells = " ".join(f"{g['precision']:6.3f}/{g['recall']:5.3f}/{g['f1']:5.3f}".rjust(20)
                         for g in (r["cv"]["groups"][k] for k in LANGS))
        print(f"{r['variant']:8} {r['cv']['threshold']:5.2f} {cells}")
    by = {r["variant"]: r["cv"]["groups"] for r in results}
    if {"fp32", "int8"} <= by.keys():
        gaps = "  ".join(f"{k} {by['int8'][k]['f1'] - by['fp32'][k]['f1']:+.3f}" for k in LANGS)
        print(f"F1 int8 - fp32: {gaps}")
    shipped = next((r["shipped"] for r in results if "shipped" in r), None)
    if shipped:
        print(f"\nas shipped: each fold's head trained on int8 embeddings, scored with both; "
              f"the shipped threshold ({shipped['fp32']['threshold']:.2f})")
        for variant in ("fp32", "int8"):
            cells = " ".join(f"{g['precision']:6.3f}/{g['recall']:5.3f}/{g['f1']:5.3f}".rjust(20)
                             for g in (shipped[variant]["groups"][k] for k in LANGS))
            print(f"{variant:8} {shipped[variant]['threshold']:5.2f} {cells}")
        f1 = {v: {k: shipped[v]["groups"][k]["f1"] for k in LANGS} for v in ("fp32", "int8")}
        gaps = "  ".join(f"{k} {f1['int8'][k] - f1['fp32'][k]:+.3f}" for k in LANGS)
        print(f"F1 int8 - fp32 (as shipped): {gaps}")


def main() -> int:
    """Run every variant in a subprocess and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--child", choices=["fp32", "int8"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return 0
    results = []
    for variant in ("fp32", "int8"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--data", str(args.data)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
