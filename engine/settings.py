"""The one configuration of the whole system: environment variables with the OMNIBRIDGE_ prefix.

Embedded default (nothing to install or start): everything lives under OMNIBRIDGE_HOME:
SQLite metadata (`omnibridge.db`), Qdrant Edge shards (`qdrant/`), an SQLite-backed Celery broker (`broker.db`).
Production: OMNIBRIDGE_DATABASE_URL=postgresql://..., OMNIBRIDGE_BROKER_URL=redis://..., OMNIBRIDGE_QDRANT_URL=http://...
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PREFIX = "OMNIBRIDGE_"
EMBEDDED = "embedded"


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the environment variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    home: Path = Field(default=Path.home() / ".omnibridge", description="data directory")
    model: str = Field(default="default", description="'default', 'bridge', 'clip:MODEL' / 'siglip:MODEL' (zero-shot, hub id or folder) or a checkpoint folder")
    device: str | None = Field(default=None, description="'cpu', 'cuda' or 'cuda:N'; empty = GPU when present")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; empty = SQLite file in the home")
    broker_url: str = Field(default=EMBEDDED, description="'embedded' (SQLite broker, in-process worker) or redis://...")
    result_backend: str | None = Field(default=None, description="Celery results; empty = follows the broker")
    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; empty = embedded Qdrant Edge")
    qdrant_api_key: str | None = Field(default=None, description="API key of the Qdrant server")
    qdrant_prefix: str = Field(default="omnibridge", description="prefix of the Qdrant collections")
    qdrant_shards: int | None = Field(default=None, ge=1, le=1024,
                                      description="shards of each new Qdrant server collection; empty = server default")
    qdrant_replicas: int | None = Field(default=None, ge=1, le=64,
                                        description="copies of each shard on a Qdrant cluster; empty = server default")
    answerer: str = Field(default="extractive", description="'extractive' (default), 'smollm2', 'extractive+smollm2' or 'qwen2-vl:MODEL[@LORA]' for answers")
    generator: str | None = Field(default=None, description="diffusers checkpoint (folder or hub id) for generate-similar")
    api_url: str | None = Field(default=None, description="the UI calls this API (http://HOST:8000); empty = in-process engine")
    api_key: str | None = Field(default=None, description="the key the UI sends to OMNIBRIDGE_API_URL")
    admin_key: str | None = Field(default=None, description="a secret the API accepts with write access to every collection")
    api_host: str = Field(default="127.0.0.1", description="address `omnibridge serve` and the demo listen on")
    api_port: int = Field(default=8000, ge=1, le=65535, description="port of the HTTP API")
    ui_port: int = Field(default=8501, ge=1, le=65535, description="port of the Streamlit UI")
    batch_size: int = Field(default=32, ge=1, le=4096, description="images embedded per batch")
    max_image_pixels: int = Field(default=100_000_000, ge=1, description="larger images are rejected (bomb guard)")
    max_file_mb: float = Field(default=200.0, gt=0, description="larger files are rejected")
    max_request_mb: float = Field(default=1024.0, gt=0, description="larger API request bodies are refused (413)")
    library_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="server folders the API may ingest from (':' or ',' separated); empty = "
                                          "uploads only")
    job_stale_seconds: float = Field(default=30.0, ge=1, le=86_400,
                                     description="a job nobody has worked on this long is resumed by a live process")
    request_timeout: float = Field(default=15.0, gt=0, le=3600,
                                   description="seconds the API waits for the next piece of a request body (408)")

    @field_validator("library_roots", mode="before")
    @classmethod
    def _library_roots(cls, v):
        roots = [Path(p) for p in (_split_roots(v) if isinstance(v, str) else v or [])]
        relative = [str(p) for p in roots if not p.is_absolute()]
        if relative:
            raise ValueError(f"{', '.join(relative)}: library roots must be absolute folders like /library")
        return roots

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError(f"{v!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'")
        return v or None

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: str | None) -> str | None:
        if v and not v.startswith(("sqlite:", "postgresql:", "postgresql+")):
            raise ValueError(f"{v!r} is not supported; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return v or None

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        if v != EMBEDDED and not v.startswith(("redis://", "rediss://", "sqla+", "memory://", "filesystem://")):
            raise ValueError(f"{v!r} is not a broker; use 'embedded' (default) or redis://HOST:6379/0")
        return v

    @field_validator("qdrant_url")
    @classmethod
    def _qdrant(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://", ":memory:")):
            raise ValueError(f"{v!r} is not a Qdrant URL; use http://HOST:6333 (or leave it empty for embedded)")
        return v or None

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an API URL; use http://HOST:8000 (or leave it empty for the in-process engine)")
        return v.rstrip("/") if v else None

    @field_validator("admin_key")
    @classmethod
    def _admin_key(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 16 or v.lower() in {"changeme", "change-me", "secret", "password"}
                              or len(set(v)) < 6):
            raise ValueError("is too weak; use a random secret of 16+ characters, e.g. `openssl rand -hex 24`")
        return v or None

    # derived ------------------------------------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'omnibridge.db'}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url == EMBEDDED

    @property
    def celery_broker(self) -> str:
        return f"sqla+sqlite:///{self.home / 'broker.db'}" if self.embedded_broker else self.broker_url

    @property
    def celery_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.embedded_broker:
            return f"db+sqlite:///{self.home / 'results.db'}"
        return self.broker_url if self.broker_url.startswith(("redis", "rediss")) else "cache+memory://"

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def qdrant_path(self) -> Path:
        return self.home / "qdrant"

    @property
    def media_dir(self) -> Path:
        """Uploaded and generated files are stored here."""
        return self.home / "media"


def _split_roots(value: str) -> list[str]:
    """Folders separated by the system's path separator (':') or commas."""
    return [p.strip() for chunk in value.split(os.pathsep) for p in chunk.split(",") if p.strip()]


def load_settings(**overrides) -> Settings:
    """Settings from the environment; a bad value raises SettingsError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            msg = err["msg"].removeprefix("Value error, ")
            if not err["type"].startswith("value_error"):
                msg += f" (got {err.get('input')!r})"
            lines.append(f"{PREFIX}{field.upper()}: {msg}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
