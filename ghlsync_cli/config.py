"""Settings from an optional TOML file, ``GHLSYNC_*`` environment variables and command-line flags.

Flags win over the environment, which wins over the file. Secrets never live here: tokens come from
the keyring, ``GHLSYNC_TOKEN`` or the opt-in secrets file whose *path* is a setting (see auth.py),
so a settings dump is always safe to print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ghlsync_cli.errors import ConfigError

APP_NAME = "ghlsync"
DEFAULT_API_BASE = "https://services.leadconnectorhq.com"
DEFAULT_OAUTH_AUTHORIZE_URL = "https://marketplace.gohighlevel.com/oauth/chooselocation"


def default_db_path() -> Path:
    """The database in the platform's user data directory."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "ghlsync.db"


def default_config_path() -> Path:
    """``config.toml`` in the platform's user config directory (optional)."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


class Settings(BaseSettings):
    """Everything ghlsync can be told, with its default."""

    model_config = SettingsConfigDict(env_prefix="GHLSYNC_", extra="forbid")

    db: Path = Field(default_factory=default_db_path)
    location: str | None = None
    api_base: str = DEFAULT_API_BASE
    default_region: str = "US"
    http_timeout: float = 30.0
    retry_attempts: int = Field(default=6, ge=1)
    retry_wait_initial: float = Field(default=0.5, ge=0)
    retry_wait_max: float = Field(default=30.0, ge=0)
    page_limit: int = Field(default=500, ge=1, le=500)
    overlap_seconds: int = Field(default=300, ge=0)
    busy_timeout_ms: int = Field(default=15000, ge=0)
    # GHL's choose-location page; the sandbox serves one at {sandbox}/oauth/chooselocation.
    oauth_authorize_url: str = DEFAULT_OAUTH_AUTHORIZE_URL
    # Opt-in secrets file (JSON, 0600) for servers without a keyring; never used unless set.
    secrets_file: Path | None = None

    @field_validator("default_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        return value.upper()

    @field_validator("api_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the TOML file named by GHLSYNC_CONFIG (or the default)."""
        path = Path(os.environ.get("GHLSYNC_CONFIG") or default_config_path())
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))


def load_settings(**flags: Any) -> Settings:
    """Build Settings; ``flags`` are command-line values, None meaning "not given"."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings: {problems}",
            hint="Check GHLSYNC_* variables, the config file and the flags.",
        ) from None
