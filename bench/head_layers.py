"""Which encoder hidden states the head should read: cross-validated F1 per language, in one run.

Usage: .venv/bin/python bench/head_layers.py [--data ../shared/data] [--taps 8,10,11,12]
       [--variant int8]

Embeds realdev.jsonl, the labelled pool items (tests/data/pool_labels.jsonl joined with
pool.jsonl) and the project's own examples once, pooling every hidden state named by --taps
(cached under .cache/train like the trainer's), then cross-validates the shipped recipe
(monitor.analysis.train: 5 folds, per-language calibration, region gate) on each candidate:
every single tap, the last layer beside each inner one, and (when --taps holds them) the shipped
head's views averaged (monitor.analysis.fit.Recipe.views). Prints realdev F1 per language at
0.42 (the default watch-list's min_score) and 0.50 and at the best worst-language threshold,
and the labelled-pool F1 at 0.42 (calibrated on realdev, as train does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LANGS = ("en", "ar")


def main() -> int:
    """Embed once, cross-validate every candidate tap set, print one table."""
    import structlog

    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.fit import (
        Dataset,
        Recipe,
        calibrate,
        calibrated,
        cross_validate,
        cross_validate_extra,
        prf,
    )
    from monitor.analysis.train import (
        OWN_DATA,
        POOL_LABELS,
        REGION_GATE,
        EmbeddingCache,
        _split_own,
        gate_factor,
        join_pool_labels,
        make_dataset,
        read_jsonl,
        row_text,
    )
    from monitor.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--taps", default="8,10,11,12")
    parser.add_argument("--variant", choices=["fp32", "int8"], default="int8",
                        help="the encoder path whose embeddings the heads are fitted to")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    taps = tuple(int(n) for n in args.taps.split(","))
    encoder = load_encoder(load_settings(), variant=args.variant)
    last = encoder.layers
    cache = EmbeddingCache(encoder, REPO / ".cache" / "train", args.variant, taps)
    dev_rows = read_jsonl(args.data / "realdev.jsonl")
    lab_rows = join_pool_labels(POOL_LABELS, read_jsonl(args.data / "pool.jsonl"))
    own_rows = read_jsonl(OWN_DATA)
    emb = {name: cache.embed(name, [row_text(r) for r in rows])
           for name, rows in (("realdev", dev_rows), ("pool_labels", lab_rows), ("own", own_rows))}

    def pick(chosen: tuple[int, ...]) -> tuple[Dataset, Dataset, Dataset]:
        cols = [taps.index(n) for n in chosen]
        own, _ = _split_own(own_rows, emb["own"][:, cols])
        return (make_dataset(dev_rows, emb["realdev"][:, cols]),
                make_dataset(lab_rows, emb["pool_labels"][:, cols]), own)

    single = Recipe(views=())  # one ensemble reading every tap of the candidate
    candidates: list[tuple[str, tuple[int, ...], Recipe]] = [
        (",".join(map(str, c)), c, single)
        for c in [(n,) for n in taps] + [(n, last) for n in taps if n != last]]
    shipped = Recipe()
    if set(shipped.taps) <= set(taps):
        name = "+".join(",".join(map(str, v)) for v in shipped.views)
        candidates.append((name, shipped.taps, shipped))
    print(f"{len(dev_rows)} realdev, {len(lab_rows)} labelled pool, {len(own_rows)} own rows")
    print(f"{'taps':16} {'dev@.42 en/ar':>14} {'dev@.50 en/ar':>14} {'best worst':>11} "
          f"{'pool@.42 en/ar':>15}")
    for label, chosen, recipe in candidates:
        dev, lab, own = pick(chosen)
        logits = cross_validate(dev, own, None, recipe, extra=lab)
        calibration = calibrate(logits, dev.y, dev.langs)
        p = calibrated(calibration, logits, dev.langs) * gate_factor(dev, REGION_GATE)
        lab_logits = cross_validate_extra(dev, own, None, recipe, lab)
        lab_p = calibrated(calibration, lab_logits, lab.langs) * gate_factor(lab, REGION_GATE)

        def f1(data: Dataset, probs: np.ndarray, t: float) -> str:
            return "/".join(f"{prf(data.y[data.langs == g], probs[data.langs == g] >= t)[2]:.3f}"
                            for g in LANGS)

        worst = max((min(prf(dev.y[dev.langs == g], p[dev.langs == g] >= t)[2] for g in LANGS),
                     float(t)) for t in np.arange(0.2, 0.81, 0.02))
        print(f"{label:16} {f1(dev, p, 0.42):>14} {f1(dev, p, 0.5):>14} "
              f"{worst[0]:6.3f}@{worst[1]:.2f} {f1(lab, lab_p, 0.42):>15}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
