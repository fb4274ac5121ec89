"""Trims a model directory's vocabulary to the pieces of the scripts Spillover reads."""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from monitor.analysis.modelfiles import TensorSource, staging_dir, write_safetensors
from monitor.errors import ModelError

log = structlog.get_logger(__name__)

ROWS_PER_CHUNK = 8192  # embedding rows copied at a time (~12 MB for 384-wide rows)


def _reindexed(path: Path, suffix: str, rows: npt.NDArray[np.int64]) -> dict[str, TensorSource]:
    """Every tensor of a safetensors file, the one named ``*suffix`` reduced to ``rows``."""
    from safetensors import safe_open

    try:
        handle: Any = safe_open(str(path), framework="numpy")
        names = list(handle.keys())
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the weights ({exc})") from exc

    def whole(name: str) -> TensorSource:
        shape = tuple(handle.get_slice(name).get_shape())
        return TensorSource(shape, lambda: iter([handle.get_tensor(name).astype(np.float32)]))

    def picked(name: str) -> TensorSource:
        view = handle.get_slice(name)
        n_rows, width = view.get_shape()

        def chunks() -> Iterator[npt.NDArray[np.float32]]:
            for start in range(0, n_rows, ROWS_PER_CHUNK):
                stop = min(start + ROWS_PER_CHUNK, n_rows)
                wanted = rows[(rows >= start) & (rows < stop)] - start
                yield view[start:stop][wanted].astype(np.float32)
        return TensorSource((len(rows), width), chunks)

    return {n: picked(n) if n.endswith(suffix) else whole(n) for n in names}


def trim_tokenizer(tokenizer: dict[str, Any], keep: Callable[[str], bool],
                   src: Path) -> tuple[dict[str, Any], list[int]]:
    """tokenizer.json with only kept pieces; returns it and the kept old ids in new order."""
    model = tokenizer.get("model", {})
    if model.get("type") != "Unigram":
        raise ModelError(f"{src}/tokenizer.json: only Unigram (XLM-R style) vocabularies "
                         f"can be trimmed, found {model.get('type')!r}")
    vocab = model["vocab"]
    scores = [s for _, s in vocab]
    # keep specials, and the lowest-scoring piece so the unknown-character penalty is unchanged
    must = {t["id"] for t in tokenizer.get("added_tokens", [])}
    must |= {model.get("unk_id") or 0, scores.index(min(scores))}
    kept = [i for i, (piece, _) in enumerate(vocab) if i in must or keep(piece)]
    remap = {old: new for new, old in enumerate(kept)}
    trimmed = json.loads(json.dumps(tokenizer))
    trimmed["model"]["vocab"] = [vocab[i] for i in kept]
    trimmed["model"]["unk_id"] = remap.get(model.get("unk_id") or 0)
    for token in trimmed.get("added_tokens", []):
        token["id"] = remap[token["id"]]
    _remap_ids(trimmed.get("post_processor"), remap)
    if trimmed.get("padding"):
        trimmed["padding"]["pad_id"] = remap[trimmed["padding"]["pad_id"]]
    return trimmed, kept


def _remap_ids(node: Any, remap: dict[int, int]) -> None:
    """Rewrite token ids inside a post_processor (TemplateProcessing or Roberta/Bert style)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                node[key] = [remap[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                value[1] = remap[value[1]]
            else:
                _remap_ids(value, remap)
    elif isinstance(node, list):
        for item in node:
            _remap_ids(item, remap)


@lru_cache(maxsize=65536)
def _readable_char(char: str) -> bool:
    code = ord(char)
    if any(lo <= code <= hi for lo, hi in READ_RANGES):
        return True
    # punctuation, symbols (incl. emoji) and numbers of any script: cheap and common in news
    return unicodedata.category(char)[0] in "PSN"


READ_RANGES = (
    (0x0020, 0x007E),  # ASCII
    (0x00A0, 0x024F),  # Latin-1 supplement, Latin extended A/B
    (0x0300, 0x036F),  # combining diacritics (accents)
    (0x1E00, 0x1EFF),  # Latin extended additional
    (0x0600, 0x06FF), (0x0750, 0x077F), (0x0870, 0x08FF),  # Arabic + supplements
    (0xFB50, 0xFDFF), (0xFE70, 0xFEFF),  # Arabic presentation forms A/B
    (0x2000, 0x206F), (0x20A0, 0x20CF),  # general punctuation, currency
    (0x2581, 0x2581),  # SentencePiece's word marker
)


def latin_arabic_piece(piece: str) -> bool:
    """True when every character of a vocabulary piece is in a script Spillover reads."""
    return all(_readable_char(c) for c in piece)


def trim_vocabulary(
    src_dir: Path, out_dir: Path, keep: Callable[[str], bool] = latin_arabic_piece
) -> Path:
    """Copy a model directory keeping only vocabulary pieces ``keep`` accepts (plus specials)."""
    try:
        tokenizer = json.loads((src_dir / "tokenizer.json").read_text(encoding="utf-8"))
        config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{src_dir}: cannot read tokenizer.json/config.json ({exc})") from exc
    trimmed, kept = trim_tokenizer(tokenizer, keep, src_dir)
    remap = {old: new for new, old in enumerate(kept)}
    config["vocab_size"] = len(kept)
    config["pad_token_id"] = remap.get(config.get("pad_token_id", 0), 0)
    with staging_dir(out_dir) as tmp:
        sources = _reindexed(src_dir / "model.safetensors", "word_embeddings.weight",
                                           np.asarray(kept, dtype=np.int64))
        write_safetensors(tmp / "model.safetensors", sources)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(json.dumps(trimmed, ensure_ascii=False),
                                            encoding="utf-8")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (src_dir / name).exists():
                shutil.copyfile(src_dir / name, tmp / name)
    log.info("vocabulary_trimmed", src=str(src_dir), out=str(out_dir),
             before=len(tokenizer["model"]["vocab"]), after=len(kept))
    return out_dir
