"""Runtime settings: flags override the environment (TIERGATE_*), which overrides a config file."""

from __future__ import annotations

from contextvars import ContextVar
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("tiergate_config_file", default=None)


class ServeSettings(BaseSettings):
    """`tiergate serve`: the embedded runtime (HTTP + SQLite)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", env_file=None, extra="ignore")

    policy: Path = Field(description="the policy YAML")
    data_dir: Path = Field(Path("tiergate-data"), description="where the SQLite store lives")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs a token")
    port: int = Field(8360, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token required on every write")
    max_skew: int = Field(300, ge=0, description="seconds an event's ts may be ahead of the clock")
    max_past: int = Field(
        86400, ge=0, description="seconds before the clock the first event of a type may be dated (history: import)"
    )
    tick_interval: float = Field(1.0, gt=0, description="seconds between checks for idle windows to close")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_batch: int = Field(10_000, gt=0, description="events in one POST")
    stale_after: int = Field(6 * 3600, gt=0, description="seconds without a window close before evidence is stale")

    @classmethod
    def load(cls, config: Path | None = None, **flags: Any) -> ServeSettings:
        """Settings from flags (None = not given), then TIERGATE_* variables, then the TOML `config` file."""
        token = _CONFIG_FILE.set(config)
        try:
            return cls(**{name: value for name, value in flags.items() if value is not None})
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = _CONFIG_FILE.get()
        if config is None:
            return init_settings, env_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config)

    def check_exposure(self) -> None:
        """Without a token the server binds to loopback only: writes would be open to anyone."""
        if self.token is None and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host} is not loopback and no token is set: set TIERGATE_TOKEN "
                "(or --token) to guard writes, or bind to 127.0.0.1"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
