"""The escalation classifier on the real converted encoder, with the shipped head and signals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from monitor.analysis.classify import Classifier, Head, default_head_path, region_features
from monitor.analysis.encoder import Encoder
from monitor.analysis.train import evaluate
from monitor.errors import ModelError

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
OWN = REPO / "tests" / "data" / "escalation_en_ar.jsonl"


def founding_article() -> str:
    """The article Spillover was founded on: from seeds/, else from the shared folder."""
    for path in (REPO / "seeds" / "founding-article.txt",
                 REPO.parent / "shared" / "seeds" / "founding-article.txt"):
        if path.exists():
            return path.read_text(encoding="utf-8")
    pytest.skip("founding-article.txt is in neither seeds/ nor ../shared/seeds/")


def shipped_signals() -> list[SimpleNamespace]:
    """config/signals.yaml as plain objects (the classifier only needs the attributes)."""
    data = yaml.safe_load((REPO / "config" / "signals.yaml").read_text(encoding="utf-8"))
    return [SimpleNamespace(**s) for s in data["signals"]]


@pytest.fixture(scope="module")
def head() -> Head:
    """The shipped head artefact."""
    return Head.load(default_head_path())


@pytest.fixture(scope="module")
def classifier(encoder_fp32: Encoder, head: Head) -> Classifier:
    """The production classifier on the fp32 encoder."""
    return Classifier(encoder_fp32, shipped_signals(), head)


POSITIVES = [
    ("en", "Israeli aircraft bomb Hamas positions in Gaza after rockets are fired at Sderot"),
    ("en", "Houthi drone boats attack a tanker off Hodeidah, the crew abandons ship"),
    ("en", "Rocket attack hits Iraqi base housing US troops west of Baghdad"),
    ("ar", "طائرات حربية إسرائيلية تقصف مواقع لحماس في غزة بعد إطلاق صواريخ على سديروت"),
    ("ar", "هجوم صاروخي يستهدف قاعدة عين الأسد التي تضم قوات أمريكية غرب العراق"),
    ("ar", "الحوثيون يستهدفون ناقلة نفط قبالة الحديدة بزوارق مفخخة"),
]
NEGATIVES = [
    ("en", "Al Hilal storm past Al Nassr in a derby battle, crushing their rivals 3-0"),
    ("en", "Magnitude 6.1 earthquake shakes western Iran, damaging homes"),
    ("en", "Gulf stock markets rise as oil prices recover"),
    ("ar", "الهلال يسحق النصر بثلاثية في معركة الديربي"),
    ("ar", "زلزال بقوة 6.1 درجات يضرب غرب إيران ويلحق أضرارا بالمنازل"),
    ("ar", "ارتفاع أسواق الأسهم الخليجية مع تعافي أسعار النفط"),
]


def test_founding_article_is_escalation(classifier: Classifier) -> None:
    """The founding article (drone attacks on US bases, Red Sea missiles) scores as escalation."""
    [scored] = classifier.score([founding_article()], ["en"])
    assert scored.score >= classifier.threshold
    top = {s.name for s in scored.signals[:4]}
    assert top & {"attack-on-forces", "missile-rocket", "air-strike", "mobilisation"}


@pytest.mark.parametrize(("lang", "text"), POSITIVES)
def test_hand_written_positive_scores_above_threshold(
    classifier: Classifier, lang: str, text: str
) -> None:
    """Clear military events in the region score above the decision threshold."""
    [scored] = classifier.score([text], [lang])
    assert scored.score >= classifier.threshold, scored.score


@pytest.mark.parametrize(("lang", "text"), NEGATIVES)
def test_hand_written_negative_scores_below_threshold(
    classifier: Classifier, lang: str, text: str
) -> None:
    """Sport in war language, earthquakes and markets score below the threshold."""
    [scored] = classifier.score([text], [lang])
    assert scored.score < classifier.threshold, scored.score


def test_own_held_out_examples_keep_f1_floor(classifier: Classifier) -> None:
    """Own examples never trained on (split=test) keep F1 >= 0.80 in each language."""
    rows = [json.loads(line) for line in OWN.read_text(encoding="utf-8").splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    scored = classifier.score([r["title"] for r in test], [r["lang"] for r in test])
    report = evaluate(test, [s.score for s in scored], classifier.threshold)
    for lang in ("en", "ar"):
        assert report.groups[lang]["f1"] >= 0.80, report.groups


def test_scored_lists_every_signal_sorted(classifier: Classifier) -> None:
    """Every configured signal appears once, scores in 0..1, sorted high to low."""
    [scored] = classifier.score([POSITIVES[0][1]], ["en"])
    names = [s.name for s in scored.signals]
    assert sorted(names) == sorted(s.name for s in shipped_signals())
    values = [s.score for s in scored.signals]
    assert values == sorted(values, reverse=True)
    assert all(0.0 <= v <= 1.0 for v in values) and 0.0 <= scored.score <= 1.0
    assert scored.embedding.shape == (384,)


def test_signal_added_only_in_yaml_gets_scores(encoder_fp32: Encoder, head: Head) -> None:
    """A new signal from YAML alone is scored, and ranks first on a text that matches it."""
    extra = SimpleNamespace(
        name="chemical-attack", direction="escalation", weight=2.0,
        description={"en": "Use of chemical weapons such as chlorine or sarin gas",
                     "ar": "استخدام أسلحة كيميائية مثل غاز الكلور أو السارين"},
        examples={"en": ["Dozens suffocate after a chlorine gas attack on the town",
                         "Doctors treat victims of a suspected sarin attack"],
                  "ar": ["اختناق العشرات إثر هجوم بغاز الكلور على البلدة",
                         "أطباء يعالجون مصابين في هجوم يشتبه بأنه بغاز السارين"]},
    )
    # The shipped signals closest to this one, so the test stays fast.
    rivals = [s for s in shipped_signals()
              if s.name in {"air-strike", "missile-rocket", "attack-on-forces", "shelling"}]
    classifier = Classifier(encoder_fp32, [*rivals, extra], head)
    en, ar = classifier.score(
        ["Residents report choking after chlorine gas canisters were dropped on Douma",
         "سكان دوما يصابون بالاختناق بعد إلقاء براميل تحوي غاز الكلور"], ["en", "ar"])
    assert en.signals[0].name == "chemical-attack"
    assert ar.signals[0].name == "chemical-attack"


def test_head_round_trips_through_npz(head: Head, tmp_path: Path) -> None:
    """A saved head loads back with identical probabilities and threshold."""
    path = tmp_path / "head.npz"
    head.save(path)
    again = Head.load(path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, head.mean.shape[0])).astype(np.float32)
    np.testing.assert_allclose(again.probability(x, ["en"] * 5), head.probability(x, ["en"] * 5))
    assert again.threshold == head.threshold
    assert again.taps == head.taps


def test_head_without_taps_reads_the_last_layer(head: Head, tmp_path: Path) -> None:
    """A head file written before taps existed loads with taps () (the last hidden state)."""
    path = tmp_path / "old.npz"
    head.save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "taps"}
    np.savez(path, **arrays)
    assert Head.load(path).taps == ()


def test_head_reads_the_hidden_states_it_was_trained_on(
    classifier: Classifier, encoder_fp32: Encoder, head: Head
) -> None:
    """The shipped head reads an inner layer beside the last; signals read the last only."""
    assert head.taps and head.taps[-1] == encoder_fp32.layers and len(head.taps) > 1
    texts = [t for _, t in POSITIVES[:2]]
    last, head_input = classifier.embed(texts)
    np.testing.assert_allclose(last, encoder_fp32.embed(texts), atol=1e-5)
    inner = encoder_fp32.embed_layers(texts, head.taps)
    np.testing.assert_allclose(head_input, inner.reshape(len(texts), -1), atol=1e-5)
    assert head_input.shape[1] + 4 == head.mean.shape[0]  # + the region features


def test_broken_head_file_names_the_fix(tmp_path: Path) -> None:
    """A corrupt head file raises ModelError naming the file and the rebuild command."""
    path = tmp_path / "head.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"head\.npz.*monitor\.analysis\.train"):
        Head.load(path)


def test_region_features_flag_places_in_both_languages() -> None:
    """Region names in English and Arabic set the region flag; Kyiv alone sets 'elsewhere only'."""
    feats = region_features(["Strikes on Gaza", "غارات على غزة", "Strikes on Kyiv", "Cake recipe"])
    assert feats[:, 2].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert feats[:, 3].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_int8_path_agrees_with_fp32(encoder_int8: Encoder, head: Head) -> None:
    """The optimised encoder gives the same decisions on the hand-written set."""
    fast = Classifier(encoder_int8, shipped_signals(), head)
    texts = [t for _, t in POSITIVES + NEGATIVES]
    langs = [lang for lang, _ in POSITIVES + NEGATIVES]
    decisions = [s.score >= fast.threshold for s in fast.score(texts, langs)]
    assert decisions == [True] * len(POSITIVES) + [False] * len(NEGATIVES)
