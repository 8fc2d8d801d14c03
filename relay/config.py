"""Settings: defaults, a TOML file, and the environment, in one validated model.

Precedence, strongest first: ``CI_RELAY_*`` environment variables (``__`` nests),
Datadog's own ``DD_API_KEY`` / ``DD_SITE``, the TOML file given with ``--config``,
then the defaults below. This is the only module that reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The Datadog sites of the intake's documentation, by the name DD_SITE takes.
SITES: dict[str, str] = {
    "datadoghq.com": "https://api.datadoghq.com",
    "us3.datadoghq.com": "https://api.us3.datadoghq.com",
    "us5.datadoghq.com": "https://api.us5.datadoghq.com",
    "datadoghq.eu": "https://api.datadoghq.eu",
    "ap1.datadoghq.com": "https://api.ap1.datadoghq.com",
    "ap2.datadoghq.com": "https://api.ap2.datadoghq.com",
    "ddog-gov.com": "https://api.ddog-gov.com",
    "us2.ddog-gov.com": "https://api.us2.ddog-gov.com",
}

Site = Literal[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
]

DEFAULT_PORT = 8780


def default_outbox_path() -> Path:
    """The outbox under the user's state directory (XDG), as a laptop install expects."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "ci-relay" / "outbox.db"


class _Group(BaseModel):
    # A typo in the config file is an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1024, ge=1)


class OutboxSettings(_Group):
    path: Annotated[Path, AfterValidator(lambda p: p.expanduser())] = Field(
        default_factory=default_outbox_path
    )
    max_events: int = Field(default=1_000_000, ge=1)
    max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    retry_after_s: int = Field(default=5, ge=1)


class UpstreamSettings(_Group):
    site: Site = "datadoghq.com"
    url: str | None = None
    api_key: SecretStr | None = None
    compress: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def base_url(self) -> str:
        """Where batches go: ``url`` when set, else the site's API host."""
        return (self.url or SITES[self.site]).rstrip("/")


class FlusherSettings(_Group):
    batch_max_events: int = Field(default=1000, ge=1, le=1000)
    batch_max_bytes: int = Field(default=4_000_000, ge=1024)
    flush_interval_s: float = Field(default=1.0, ge=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    expiry_warning_s: float = Field(default=12 * 3600, gt=0)
    unauthorized_probe_s: float = Field(default=60.0, gt=0)


class RetrySettings(_Group):
    initial_backoff_s: float = Field(default=1.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_backoff_s: float = Field(default=60.0, gt=0)


class LogSettings(_Group):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """Every setting of the relay; ``config.example.toml`` documents each key."""

    model_config = SettingsConfigDict(
        env_prefix="CI_RELAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    flusher: FlusherSettings = Field(default_factory=FlusherSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _DatadogEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )

    def redacted(self) -> dict[str, Any]:
        """The effective settings for the startup log: the API key is never shown."""
        data = self.model_dump(mode="json")
        data["upstream"]["api_key"] = "set (redacted)" if self.upstream.api_key else None
        return data


class _DatadogEnvSource(PydanticBaseSettingsSource):
    """DD_API_KEY and DD_SITE, honoured as Datadog's own tools honour them."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        upstream: dict[str, str] = {}
        if key := os.environ.get("DD_API_KEY"):
            upstream["api_key"] = key
        if site := os.environ.get("DD_SITE"):
            upstream["site"] = site
        return {"upstream": upstream} if upstream else {}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from ``config_file`` (if any) and the environment, or ConfigError."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file}: not found")

    class _Settings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        return _Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # a TOML syntax error, with its line and column
        raise ConfigError(f"config file {config_file}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return f"invalid config: {key}: {first['msg']}{suffix}"
