"""The one configuration of the whole system: environment variables with the OMNIBRIDGE_ prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNIBRIDGE_", extra="ignore")

    home: Path = Field(default=Path.home() / ".omnibridge", description="data directory (OMNIBRIDGE_HOME)")
    model: str = Field(default="default", description="'default', 'bridge' or a checkpoint folder (OMNIBRIDGE_MODEL)")
    device: str | None = Field(default=None, description="'cpu', 'cuda' or 'cuda:N'; empty = GPU when present")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError(f"OMNIBRIDGE_DEVICE={v!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'")
        return v or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
