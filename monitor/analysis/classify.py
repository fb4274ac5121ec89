"""Escalation scoring: a trained head on frozen encoder embeddings plus per-signal similarity.

The head (monitor/data/head.npz) gives the calibrated escalation probability. Signal scores
come from the encoder alone (similarity to each signal's examples in config/signals.yaml), so
a signal added to the YAML gets scores without retraining.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import structlog

from monitor.errors import ModelError
from monitor.models import SignalScore

log = structlog.get_logger(__name__)

Array = npt.NDArray[np.float32]

# Place names of the monitored region and of elsewhere. The labelling rules count military
# violence only in the Middle East, which the embedding alone blurs (Kyiv vs Gaza strikes).
_REGION_TERMS = (
    "israel|gaza|west bank|jenin|nablus|tulkarm|hebron|ramallah|jerusalem|rafah|khan youn|"
    "palestin|hamas|islamic jihad|lebanon|lebanese|beirut|hezbollah|syria|damascus|aleppo|"
    "idlib|ghouta|daraa|homs|deir|raqqa|golan|iraq|baghdad|basra|mosul|kirkuk|erbil|"
    "sulaimaniyah|sinjar|anbar|iran|tehran|irgc|revolutionary guard|quds force|yemen|houthi|"
    "sanaa|aden|hodeidah|marib|red sea|mandeb|mandab|hormuz|persian gulf|saudi|riyadh|jazan|"
    "uae|emirat|abu dhabi|dubai|qatar|bahrain|kuwait|oman|jordan|amman|egypt|cairo|sinai|"
    "suez|tel aviv|haifa|ashkelon|sderot|idf|pentagon|centcom|middle east|kataib|"
    "popular mobilisation|pmf|ain al-asad|"
    "إسرائيل|اسرائيل|الإسرائيلي|غزة|الضفة|جنين|نابلس|طولكرم|الخليل|رام الله|القدس|رفح|"
    "خان يونس|فلسطين|الفلسطيني|حماس|الجهاد الإسلامي|لبنان|اللبناني|بيروت|حزب الله|سوريا|"
    "سورية|السوري|دمشق|حلب|إدلب|ادلب|الغوطة|درعا|حمص|دير الزور|الرقة|الجولان|العراق|"
    "العراقي|بغداد|البصرة|الموصل|كركوك|أربيل|السليمانية|سنجار|الأنبار|إيران|ايران|"
    "الإيراني|طهران|الحرس الثوري|فيلق القدس|اليمن|اليمني|الحوثي|صنعاء|عدن|الحديدة|مأرب|"
    "البحر الأحمر|باب المندب|هرمز|الخليج|السعودي|الرياض|جازان|نجران|الإمارات|الإماراتي|"
    "أبوظبي|دبي|قطر|البحرين|الكويت|عمان|الأردن|الأردني|مصر|المصري|القاهرة|سيناء|السويس|"
    "تل أبيب|حيفا|عسقلان|سديروت|البنتاغون|الشرق الأوسط|الحشد الشعبي|التحالف"
)
_ELSEWHERE_TERMS = (
    "ukrain|kyiv|kiev|russia|moscow|crimea|sevastopol|sudan|khartoum|darfur|libya|tripoli|"
    "benghazi|somali|mogadishu|shabab|afghan|kabul|taliban|pakistan|india|kashmir|korea|"
    "pyongyang|taiwan|china|beijing|turkey|turkish|ankara|istanbul|mali|niger|nigeria|"
    "ethiopia|tigray|myanmar|armenia|azerbaijan|georgia|ossetia|mauritania|chad|congo|kenya|"
    "colombia|mexico|haiti|europe|britain|london|france|paris|germany|america|washington|"
    "أوكرانيا|اوكرانيا|كييف|روسيا|موسكو|القرم|السودان|الخرطوم|دارفور|ليبيا|الليبي|طرابلس|"
    "بنغازي|الصومال|مقديشو|الشباب|أفغانستان|افغانستان|كابل|طالبان|باكستان|الهند|كشمير|"
    "كوريا|تايوان|الصين|بكين|تركيا|التركي|أنقرة|إسطنبول|مالي|النيجر|نيجيريا|إثيوبيا|"
    "ميانمار|أرمينيا|أذربيجان|جورجيا|موريتانيا|الموريتاني|تشاد|الكونغو|كينيا|كولومبيا|"
    "المكسيك|أوروبا|بريطانيا|لندن|فرنسا|باريس|ألمانيا|أمريكا|واشنطن"
)
_REGION = re.compile(_REGION_TERMS, re.IGNORECASE)
_ELSEWHERE = re.compile(_ELSEWHERE_TERMS, re.IGNORECASE)
PREFIX = "query: "
MAX_LENGTH = 128


class SignalSpec(Protocol):
    """What the classifier needs of a configured signal (monitor.config.SignalDef fits).

    ``description`` and ``examples`` are per language: a mapping lang -> text(s), or an
    object with one attribute per language (``.en``, ``.ar``).
    """

    @property
    def name(self) -> str: ...
    @property
    def direction(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def description(self) -> object: ...
    @property
    def examples(self) -> object: ...


def _per_language(value: object) -> dict[str, object]:
    """Mapping or per-language model (pydantic) -> plain dict lang -> value."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return {k: v for k, v in vars(value).items() if not k.startswith("_")}


def signal_texts(signal: SignalSpec) -> list[str]:
    """Every example sentence and description of a signal, all languages."""
    texts: list[str] = []
    for items in _per_language(signal.examples).values():
        if isinstance(items, str):
            texts.append(items)
        elif isinstance(items, Iterable):
            texts += [str(t) for t in items]
    texts += [str(t) for t in _per_language(signal.description).values() if t]
    return [t for t in texts if t.strip()]


class Embedder(Protocol):
    """The encoder seam (monitor.analysis.encoder.Encoder fits).

    ``embed`` pools the last hidden state, ``embed_layers`` the ones numbered ``taps``
    (0 = embeddings, ``layers`` = last) into (texts, taps, dim).
    """

    @property
    def layers(self) -> int: ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        prefix: str = "query: ",
        max_length: int = 128,
    ) -> Array: ...

    def embed_layers(
        self,
        texts: Sequence[str],
        taps: Sequence[int],
        *,
        batch_size: int = 32,
        prefix: str = "query: ",
        max_length: int = 128,
    ) -> Array: ...


@dataclass(frozen=True, eq=False)
class Scored:
    """The classifier's output for one text."""

    score: float
    signals: tuple[SignalScore, ...]
    embedding: Array = field(repr=False)


def region_features(texts: Sequence[str]) -> Array:
    """Gazetteer features: region mentions, elsewhere mentions, and their flags."""
    rows = []
    for text in texts:
        here = len(_REGION.findall(text))
        away = len(_ELSEWHERE.findall(text))
        only_away = float(away > 0 and not here)
        rows.append([min(here, 3) / 3, min(away, 3) / 3, float(here > 0), only_away])
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 4)


def default_head_path() -> Path:
    """Where the shipped head artefact lives (inside the package)."""
    return Path(__file__).resolve().parent.parent / "data" / "head.npz"


def _sigmoid(z: Array) -> Array:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Head:
    """An ensemble of MLPs on [embedding, region features], calibrated per language.

    Shapes: w1 (k, d, h), b1 (k, h), w2 (k, h), b2 (k,); calibration maps lang -> (a, c)
    for p = sigmoid(a * z + c) where z is the ensemble's mean logit; the classifier multiplies
    p by region_gate when the text names no place in the region. ``taps`` names the encoder
    hidden states whose pooled embeddings, in order, precede the region features (empty:
    the last one only).
    """

    mean: Array
    scale: Array
    w1: Array
    b1: Array
    w2: Array
    b2: Array
    calibration: Mapping[str, tuple[float, float]]
    threshold: float = 0.5
    signal_centre: float = 0.86
    signal_width: float = 0.02
    region_gate: float = 1.0
    taps: tuple[int, ...] = ()

    def logits(self, features: Array) -> Array:
        """The ensemble's mean raw logit for each row."""
        x = (features - self.mean) / self.scale
        hidden = np.maximum(np.einsum("nd,kdh->knh", x, self.w1) + self.b1[:, None, :], 0.0)
        z = np.einsum("knh,kh->kn", hidden, self.w2) + self.b2[:, None]
        return np.asarray(z.mean(axis=0), dtype=np.float32)

    def probability(self, features: Array, langs: Sequence[str]) -> Array:
        """Calibrated escalation probability; unknown languages use the pooled calibration."""
        z = self.logits(features)
        fallback = self.calibration.get("all", (1.0, 0.0))
        ab = np.array([self.calibration.get(lang, fallback) for lang in langs], dtype=np.float32)
        return _sigmoid(ab[:, 0] * z + ab[:, 1]) if len(langs) else z

    def save(self, path: Path) -> None:
        """Write the head as a compressed .npz (arrays only, no pickle)."""
        langs = sorted(self.calibration)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, mean=self.mean, scale=self.scale, w1=self.w1, b1=self.b1, w2=self.w2,
            b2=self.b2, cal_langs=np.array(langs),
            cal=np.array([self.calibration[k] for k in langs], dtype=np.float32),
            scalars=np.array(
                [self.threshold, self.signal_centre, self.signal_width, self.region_gate]
            ),
            taps=np.array(self.taps, dtype=np.int64),
        )

    @classmethod
    def load(cls, path: Path | None = None) -> Head:
        """Read a head written by save(); ModelError if missing or malformed."""
        path = path or default_head_path()
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"{path}: cannot read the classifier head ({exc}); rebuild it with "
                "`python -m monitor.analysis.train --data ../shared/data "
                "--out monitor/data/head.npz`"
            ) from exc
        return cls._from_arrays(path, arrays)

    @classmethod
    def _from_arrays(cls, path: Path, a: dict[str, npt.NDArray[np.generic]]) -> Head:
        try:
            pairs = zip(a["cal_langs"], a["cal"], strict=True)
            cal = {str(k): (float(v[0]), float(v[1])) for k, v in pairs}
            threshold, centre, width, gate = (float(v) for v in [*a["scalars"], 1.0][:4])
            f32 = {k: a[k].astype(np.float32) for k in ("mean", "scale", "w1", "b1", "w2", "b2")}
            taps = tuple(int(n) for n in a.get("taps", np.zeros(0, np.int64)))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path}: not a Spillover classifier head (missing {exc})") from exc
        return cls(
            calibration=cal, threshold=threshold, signal_centre=centre, signal_width=width,
            region_gate=gate, taps=taps, **f32,
        )


class Classifier:
    """Scores texts for escalation and for each configured signal."""

    def __init__(
        self, encoder: Embedder, signals: Sequence[SignalSpec], head: Head | None
    ) -> None:
        self._encoder = encoder
        self._signals = list(signals)
        self._head = head
        self._prototypes = [self._embed_signal(s) for s in self._signals]
        log.info("classifier_ready", signals=len(self._signals), head=head is not None)

    @property
    def encoder(self) -> Embedder:
        """The encoder (reused when the config reloads)."""
        return self._encoder

    @property
    def head(self) -> Head | None:
        """The trained head, if any."""
        return self._head

    @property
    def threshold(self) -> float:
        """The decision threshold for 'escalation' (the head's, else 0.5)."""
        return self._head.threshold if self._head else 0.5

    def _embed_signal(self, signal: SignalSpec) -> Array:
        texts = signal_texts(signal)
        if not texts:
            raise ModelError(
                f"signal {signal.name!r} has no examples or description to score against"
            )
        return self._encoder.embed(texts, prefix=PREFIX, max_length=MAX_LENGTH)

    @property
    def signals(self) -> list[SignalSpec]:
        """The configured signals, in config order (columns of signal_matrix)."""
        return list(self._signals)

    def signal_similarity(self, embeddings: Array) -> Array:
        """Raw cosine per signal (n, signals): mean of the two closest examples."""
        cols = []
        for protos in self._prototypes:
            sims = np.sort(embeddings @ protos.T, axis=1)[:, -2:]
            cols.append(sims.mean(axis=1))
        if not cols:
            return np.zeros((len(embeddings), 0), np.float32)
        return np.asarray(np.stack(cols, axis=1), dtype=np.float32)

    def signal_matrix(self, embeddings: Array) -> Array:
        """Per-signal 0..1 scores (n, signals): similarity through one shared calibration.

        The calibration is fitted on labelled signals but shared by all of them, so a
        signal added to the YAML is scored on the same scale without retraining.
        """
        centre = self._head.signal_centre if self._head else 0.86
        width = self._head.signal_width if self._head else 0.02
        raw = self.signal_similarity(embeddings)
        return _sigmoid(np.asarray((raw - centre) / width, dtype=np.float32))

    def score(self, texts: Sequence[str], langs: Sequence[str]) -> list[Scored]:
        """Score a batch (blocking: run it off the event loop)."""
        if len(texts) != len(langs):
            raise ValueError(f"{len(texts)} texts but {len(langs)} langs")
        if not texts:
            return []
        emb, head_input = self.embed(texts)
        sig = self.signal_matrix(emb)
        prob = self._probability(head_input, texts, langs, sig)
        out = []
        for i in range(len(texts)):
            pairs = [
                SignalScore(name=s.name, score=round(float(sig[i, j]), 4))
                for j, s in enumerate(self._signals)
            ]
            pairs.sort(key=lambda p: -p.score)
            out.append(Scored(score=float(prob[i]), signals=tuple(pairs), embedding=emb[i]))
        return out

    def embed(self, texts: Sequence[str]) -> tuple[Array, Array]:
        """(last-layer embeddings, the head's embedding input) from one encoder pass.

        The head may read inner hidden states (Head.taps); signals and stories always use
        the last one, so the tap list is the head's plus the last.
        """
        last = self._encoder.layers
        head_taps = (self._head.taps if self._head else ()) or (last,)
        taps = tuple(dict.fromkeys([*head_taps, last]))
        layers = self._encoder.embed_layers(list(texts), taps, prefix=PREFIX,
                                            max_length=MAX_LENGTH)
        head_input = np.hstack([layers[:, taps.index(n)] for n in head_taps])
        return layers[:, taps.index(last)], np.asarray(head_input, dtype=np.float32)

    def _probability(
        self, head_input: Array, texts: Sequence[str], langs: Sequence[str], sig: Array
    ) -> Array:
        regions = region_features(texts)
        if self._head is not None:
            p = self._head.probability(np.hstack([head_input, regions]), langs)
            # Every labelled positive names a place in the region; damp those that name none.
            return np.asarray(p * np.where(regions[:, 2] > 0, 1.0, self._head.region_gate),
                              dtype=np.float32)
        # No head: the strongest escalation signal, damped where no region place is named.
        esc = [j for j, s in enumerate(self._signals) if s.direction == "escalation"]
        best = sig[:, esc].max(axis=1) if esc else np.zeros(len(texts), np.float32)
        return np.asarray(best * np.where(regions[:, 2] > 0, 1.0, 0.3), dtype=np.float32)
