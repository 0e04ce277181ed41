"""Runtime settings: flags override the environment (TIERGATE_*), which overrides a config file.

Every mistake names where the value came from, so the user knows what to change: a flag (`--port`), a
variable (`TIERGATE_PORT`) or a key of the TOML file (`tiergate.toml: port`). A config file that does not
exist, cannot be parsed or holds a key no setting has is an error, never silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .access import Credentials, CredentialsError

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("tiergate_config_file", default=None)

Settings = TypeVar("Settings", bound=BaseSettings)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names its source (flag, variable or file key) and the fix."""


class _StrictToml(TomlConfigSettingsSource):
    """The TOML settings file: it must exist, parse, and hold only keys that are settings."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        if not toml_file.is_file():
            raise SettingsError(f"--config {toml_file}: no such settings file; give the path of a TOML file")
        try:
            super().__init__(settings_cls, toml_file=toml_file)
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{toml_file}: not valid TOML: {error}") from None
        unknown = sorted(set(self.toml_data) - set(settings_cls.model_fields))
        if unknown:
            known = ", ".join(sorted(settings_cls.model_fields))
            raise SettingsError(
                f"{toml_file}: unknown setting {', '.join(map(repr, unknown))}; the settings are: {known}"
            )


class _Layered(BaseSettings):
    """Settings read from flags, then TIERGATE_* variables, then (if given) a TOML file."""

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
        return init_settings, env_settings, _StrictToml(settings_cls, config)


class StoreSettings(_Layered):
    """The commands that read or write an embedded data directory (`import`, `export`) or fold under a
    policy file (`replay`, `import`): TIERGATE_DATA_DIR and TIERGATE_POLICY, like `serve`."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", env_file=None, extra="ignore")

    policy: Path | None = Field(None, description="the policy YAML")
    data_dir: Path = Field(Path("tiergate-data"), description="where the SQLite store lives")


class ServeSettings(StoreSettings):
    """`tiergate serve`: the embedded runtime (HTTP + SQLite)."""

    policy: Path | None = Field(None, description="the policy YAML (optional once the data dir's log carries one)")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs a token")
    port: int = Field(8360, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="legacy: one bearer token, acting as an operator")
    credentials: SecretStr | None = Field(
        None, description="credentials, one `name role secret` a line (or credentials_file)"
    )
    credentials_file: Path | None = Field(None, description="a file of credentials, one `name role secret` a line")
    max_skew: int = Field(300, ge=0, description="seconds an event's ts may be ahead of the clock")
    max_past: int = Field(
        86400, ge=0, description="seconds before the clock the first event of a type may be dated (history: import)"
    )
    tick_interval: float = Field(1.0, gt=0, description="seconds between checks for idle windows to close")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_batch: int = Field(10_000, gt=0, description="events in one POST")
    body_timeout: float = Field(30.0, gt=0, description="seconds a client may take to send a request body")
    stale_after: int = Field(6 * 3600, gt=0, description="seconds without a window close before evidence is stale")

    @field_validator("token")
    @classmethod
    def _token_is_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("the token is empty: give a real secret, or leave the token unset (loopback only)")
        return token

    @classmethod
    def load(cls, config: Path | None = None, **flags: Any) -> ServeSettings:
        """Settings from flags (None = not given), then TIERGATE_* variables, then the TOML `config` file."""
        return load(cls, config, **flags)

    def check_exposure(self) -> None:
        """Without credentials the server binds to loopback only: writes would be open to anyone."""
        unguarded = self.token is None and self.credentials is None and self.credentials_file is None
        if unguarded and not _is_loopback(self.host):
            raise SettingsError(
                f"host {self.host} is not loopback and no credentials are set: set TIERGATE_CREDENTIALS_FILE "
                "(roles agent, reporter, operator, reader) to guard the server, or bind to 127.0.0.1"
            )

    def load_credentials(self) -> Credentials | None:
        """The credentials the server knows (None: no credentials file or variable), or a SettingsError
        naming the variable or file, the line and the fix."""
        if self.credentials is not None and self.credentials_file is not None:
            raise SettingsError(
                "both TIERGATE_CREDENTIALS and TIERGATE_CREDENTIALS_FILE are set: keep one (the file is preferred)"
            )
        if self.token is not None and (self.credentials is not None or self.credentials_file is not None):
            raise SettingsError(
                "both a token (TIERGATE_TOKEN) and credentials are set: add the token's holder to the credentials "
                "as an operator (`name operator <token>`) and unset TIERGATE_TOKEN"
            )
        if self.credentials is not None:
            return _parsed(self.credentials.get_secret_value(), "TIERGATE_CREDENTIALS")
        if self.credentials_file is not None:
            return _parsed(_read_secret_file(self.credentials_file), str(self.credentials_file))
        return None


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise SettingsError(
            f"TIERGATE_CREDENTIALS_FILE {path}: cannot read it ({detail}); give a readable UTF-8 file of "
            "`name role secret` lines"
        ) from None


def _parsed(text: str, source: str) -> Credentials:
    try:
        return Credentials.parse(text, source)
    except CredentialsError as error:
        raise SettingsError(str(error)) from None


class ConsoleSettings(_Layered):
    """`tiergate console --kafka`: the read-only console of a Kafka deployment, on its own port. Readers and
    operators sign in with the credentials of TIERGATE_CREDENTIALS_FILE (or TIERGATE_CREDENTIALS); without
    any it binds to loopback only."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs credentials")
    port: int = Field(8362, ge=0, le=65535)
    credentials: SecretStr | None = Field(None, description="credentials, one `name role secret` a line")
    credentials_file: Path | None = Field(None, description="a file of credentials, one `name role secret` a line")

    def check_exposure(self) -> None:
        """Without credentials the console binds to loopback only: the whole promotion log would be open."""
        if self.credentials is None and self.credentials_file is None and not _is_loopback(self.host):
            raise SettingsError(
                f"host {self.host} is not loopback and no credentials are set: set TIERGATE_CREDENTIALS_FILE "
                "(reader and operator credentials sign in to the console), or bind to 127.0.0.1"
            )

    def load_credentials(self) -> Credentials | None:
        if self.credentials is not None and self.credentials_file is not None:
            raise SettingsError(
                "both TIERGATE_CREDENTIALS and TIERGATE_CREDENTIALS_FILE are set: keep one (the file is preferred)"
            )
        if self.credentials is not None:
            return _parsed(self.credentials.get_secret_value(), "TIERGATE_CREDENTIALS")
        if self.credentials_file is not None:
            return _parsed(_read_secret_file(self.credentials_file), str(self.credentials_file))
        return None


def server_url(url: str) -> str:
    """A server's URL as the HTTP client needs it: http:// or https:// and a host. Without a scheme,
    `localhost:8360` would be read as the scheme `localhost` and fail with the client's own jargon."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    if "://" not in url and url.lower().startswith(("http:", "https:", "http/", "https/")):
        raise ValueError("a mistyped scheme: write it http:// or https:// (e.g. http://127.0.0.1:8360)")
    if "://" not in url:
        raise ValueError(f"no scheme: add http:// (e.g. http://{url})")
    if parts.scheme not in ("http", "https"):
        raise ValueError("a tiergate server speaks http:// or https:// (e.g. http://127.0.0.1:8360)")
    raise ValueError("no host: name the server after the scheme (e.g. http://127.0.0.1:8360)")


class OperatorSettings(_Layered):
    """Where the commands that talk to a server (`override`, `explain`, `policy`, `checkpoint`) send, and
    with which credential (never a flag: it would show in `ps`)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", env_file=None, extra="ignore")

    server: str = Field("http://127.0.0.1:8360", description="the embedded server's URL")
    credential: SecretStr | None = Field(None, description="an operator credential's secret")
    credential_file: Path | None = Field(None, description="a file holding an operator credential's secret")

    @field_validator("server")
    @classmethod
    def _a_server_url(cls, value: str) -> str:
        return server_url(value)

    def secret(self) -> str | None:
        if self.credential is not None:
            return self.credential.get_secret_value().strip()
        if self.credential_file is None:
            return None
        try:
            return self.credential_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            detail = getattr(error, "strerror", None) or str(error)
            raise SettingsError(
                f"TIERGATE_CREDENTIAL_FILE {self.credential_file}: cannot read it ({detail}); give the file that "
                "holds an operator credential's secret"
            ) from None


def load(cls: type[Settings], config: Path | None = None, **flags: Any) -> Settings:
    """`cls` from flags (None = not given), its environment variables and the TOML `config` file, or a
    SettingsError that names the source of every bad value."""
    given = {name: value for name, value in flags.items() if value is not None}
    token = _CONFIG_FILE.set(config)
    try:
        return cls(**given)
    except ValidationError as error:
        problems = [_problem(cls, problem, given, config) for problem in error.errors()]
        raise SettingsError("\n".join(problems)) from None
    finally:
        _CONFIG_FILE.reset(token)


def _problem(cls: type[BaseSettings], problem: Any, given: dict[str, Any], config: Path | None) -> str:
    field = str(problem["loc"][0]) if problem["loc"] else ""
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "missing":
        variable = _variable(cls, field)
        return f"{field}: missing; give --{field.replace('_', '-')} or set {variable}"
    secret = "SecretStr" in str(cls.model_fields[field].annotation) if field in cls.model_fields else False
    shown = "" if secret else f" (got {problem.get('input')!r})"
    return f"{_source(cls, field, given, config)}: {message}{shown}"


def _source(cls: type[BaseSettings], field: str, given: dict[str, Any], config: Path | None) -> str:
    """Where a setting's value came from: the flag, the environment variable, or the config file's key."""
    variable = _variable(cls, field)
    if field in given:
        return f"--{field.replace('_', '-')}"
    if any(name.upper() == variable for name in os.environ):
        return variable
    if config is not None:
        return f"{config}: {field}"
    return field


def _variable(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
