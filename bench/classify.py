"""Classifier throughput, peak memory and realdev F1 for the fp32 and int8 encoder paths.

Usage: .venv/bin/python bench/classify.py [--data ../shared/data]

Each variant runs in its own subprocess so its peak RSS is its own. Timing texts are the
project's own examples (tests/data/escalation_en_ar.jsonl); F1 uses realdev.jsonl when the
data folder exists (it is never copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(variant: str, data: Path) -> dict[str, object]:
    """Measure one variant in this process and return its figures."""
    from monitor.analysis.classify import Classifier, Head
    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.train import OWN_DATA, evaluate, load_signals, read_jsonl, row_text
    from monitor.settings import load_settings

    started = time.perf_counter()
    encoder = load_encoder(load_settings(), variant=variant)
    clf = Classifier(encoder, load_signals(REPO / "config" / "signals.yaml"), Head.load())
    load_s = time.perf_counter() - started
    rows = read_jsonl(OWN_DATA)
    texts, langs = [row_text(r) for r in rows], [str(r["lang"]) for r in rows]
    clf.score(texts[:4], langs[:4])  # warm-up
    started = time.perf_counter()
    for text, lang in zip(texts[:48], langs[:48], strict=True):
        clf.score([text], [lang])
    batch1 = 48 / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        clf.score(texts[i : i + 32], langs[i : i + 32])
    batch32 = len(texts) / (time.perf_counter() - started)
    out: dict[str, object] = {"variant": variant, "load_s": load_s, "batch1": batch1,
                              "batch32": batch32}
    if (data / "realdev.jsonl").exists():
        dev = read_jsonl(data / "realdev.jsonl")
        scored = clf.score([row_text(r) for r in dev], [str(r["lang"]) for r in dev])
        report = evaluate(dev, [s.score for s in scored], clf.threshold)
        out.update({f"f1_{k}": report.groups[k]["f1"] for k in ("en", "ar", "all")})
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


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
    print("note: F1 on realdev is in-sample for the shipped head (trained on it); CV F1 is"
          " printed by `python -m monitor.analysis.train`")
    print(f"{'variant':8} {'load s':>7} {'b1 t/s':>7} {'b32 t/s':>8} {'RSS MB':>7}"
          f" {'F1 en':>6} {'F1 ar':>6}")
    for r in results:
        print(f"{r['variant']:8} {r['load_s']:7.1f} {r['batch1']:7.1f} {r['batch32']:8.1f}"
              f" {r['peak_rss_mb']:7.0f} {r.get('f1_en', float('nan')):6.3f}"
              f" {r.get('f1_ar', float('nan')):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
