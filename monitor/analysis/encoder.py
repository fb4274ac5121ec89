"""The sentence encoder: loads a prepared local copy (fp32 or int8) and embeds text in batches."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import torch

from monitor.analysis.int8 import load_int8
from monitor.errors import ModelError
from monitor.settings import Settings

log = structlog.get_logger(__name__)

QUERY_PREFIX = "query: "
VARIANTS = ("fp32", "int8")
# Padded tokens per forward. Small GEMMs cost little on CPU (512 vs 4096: same texts/s) and
# keep every activation under ~3 MB, which glibc recycles instead of re-faulting each time.
MAX_BATCH_TOKENS = 512
# Hand freed heap back to the OS at most this often (seconds) while embedding: glibc keeps
# what the forward passes freed, and the peak RSS of the int8 path crept from ~490 to ~630 MB
# over a few thousand texts; trimming every half second held it near 570 (bench/classify.py).
TRIM_INTERVAL = 0.5


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
        self._trimmed = time.monotonic()

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
            if time.monotonic() - self._trimmed >= TRIM_INTERVAL:
                _trim_heap()
                self._trimmed = time.monotonic()
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


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc; elsewhere nothing to do)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _settle_memory() -> None:
    """Return load-time garbage (JSON parsing, float weights read for quantising) to the OS."""
    gc.collect()
    _trim_heap()


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
    from monitor.analysis.prepare import prepare_model  # prepare probes with open_encoder

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
