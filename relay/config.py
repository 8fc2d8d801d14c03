"""Settings: defaults, a TOML file, and the environment, in one validated model.

Precedence, strongest first: ``CI_RELAY_*`` environment variables (``__`` nests),
Datadog's own ``DD_API_KEY`` / ``DD_SITE``, the TOML file given with ``--config``,
then the defaults below. This is the only module that reads the environment.

A key the file does not know is an error naming the closest setting; a ``CI_RELAY_*``
variable that names no setting is left out of the settings and listed by
``unknown_variables`` (with the closest variable), for ``serve`` to warn about and
``check-config`` to refuse: the environment is shared with other programs, the file is not.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit
from urllib.request import getproxies

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from yarl import URL

from relay.contract.exceptions import UserError
from relay.contract.intake import MAX_EVENTS_PER_REQUEST, PIPELINE_PATH, SITES, Site
from relay.contract.local import DEFAULT_HOST, DEFAULT_PORT, RUNNER_VARIABLES


def default_outbox_path() -> Path:
    """The outbox under the user's state directory (XDG), as a laptop install expects."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "ci-relay" / "outbox.db"


class _Group(BaseModel):
    # A typo in the config file is an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")


def clean_secret(value: Any) -> Any:
    """Strip surrounding white space (a secret file's newline); refuse what a header cannot hold.

    The message never repeats the secret.
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    key = value.strip()
    if any(not (" " <= char <= "~") for char in key):
        raise ValueError(
            "holds a control or non-ASCII character; a key or token is printable ASCII "
            "(check the secret it was read from)"
        )
    return key or None


Secret = Annotated[SecretStr | None, BeforeValidator(clean_secret)]
SecretFile = Annotated[Path, AfterValidator(lambda p: p.expanduser())] | None


def _one_of(group: BaseModel, inline: str, file: str) -> None:
    """At most one of the fields ``inline`` and ``file`` of ``group`` is set."""
    if getattr(group, inline) is not None and getattr(group, file) is not None:
        raise ValueError(f"set {inline} or {file}, not both")


class ServerSettings(_Group):
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    # Bytes of request bodies parsed and stored at once (relay.ingest.admission); more wait,
    # then 503.
    max_parsing_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    parse_wait_s: float = Field(default=5.0, ge=0)
    ingest_token: Secret = None
    ingest_token_file: SecretFile = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> ServerSettings:
        _one_of(self, "ingest_token", "ingest_token_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return self

    @property
    def local_url(self) -> str:
        """Where a command on this machine reaches the relay: a relay listening on every
        address (0.0.0.0, ::, or aiohttp's empty host) is asked on the loopback address."""
        scheme = "http" if self.tls_cert_file is None else "https"
        host = self.host.strip("[]") or "0.0.0.0"  # noqa: S104 (only mapped to loopback)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a name, such as localhost
            return f"{scheme}://{host}:{self.port}"
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{scheme}://{shown}:{self.port}"

    @property
    def loopback_only(self) -> bool:
        """True when only this machine can reach the listener."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to any address
            return False


class OutboxSettings(_Group):
    path: Annotated[Path, AfterValidator(lambda p: p.expanduser())] = Field(
        default_factory=default_outbox_path
    )
    max_events: int = Field(default=1_000_000, ge=1)
    max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    retry_after_s: int = Field(default=5, ge=1)
    busy_timeout_s: float = Field(default=10.0, gt=0)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_IPV4_LIKE = re.compile(r"[0-9.]+")
_PORT = re.compile(r"[0-9]+")


def check_http_url(url: str, schemes: tuple[str, ...], example: str) -> SplitResult:
    """``url`` split into its parts, once its scheme, login, host and port are usable: the
    checks a request would otherwise fail on only when it is sent (a port out of range, a
    login HTTP basic authentication cannot carry). Path, query and fragment are left to
    the caller.

    ValueError otherwise, whose message quotes no part of ``url``: a broken URL may hold a
    login or secret anywhere (``http://user:pa/ss@host`` splits the secret at the slash).
    """
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError("holds a blank or control character")
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in schemes:
        starts = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"must start with {starts}, e.g. {example}")
    authority = re.match(r"[^/?#]*", rest)
    assert authority is not None  # the pattern matches the empty string
    if "@" in rest[authority.end() :]:
        raise ValueError(
            "holds an @ after its host: in a login or secret, write / ? and # as %2F %3F %23"
        )
    _, at, host_port = authority.group().rpartition("@")
    _check_host_port(host_port)
    if at:
        _check_login(url)
    return urlsplit(url)


def _check_host_port(host_port: str) -> None:
    """A host (a name, IPv4, or IPv6 in brackets) and an optional port from 1 to 65535."""
    if host_port.startswith("["):
        inside, closed, after = host_port[1:].partition("]")
        if not closed:
            raise ValueError("has an IPv6 host without its closing ]")
        try:
            ipaddress.IPv6Address(unquote(inside))
        except ValueError:
            raise ValueError("has a bracketed host that is not valid IPv6") from None
        if after and not after.startswith(":"):
            raise ValueError("has text after its IPv6 host's ]")
        port = after[1:]
    else:
        host, _, port = host_port.partition(":")
        if ":" in port:
            raise ValueError("has more than one : after its host; an IPv6 host goes in brackets")
        _check_host(host)
    if port and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        raise ValueError("has a port that is not a number from 1 to 65535")


def _check_host(host: str) -> None:
    """A name of dotted labels (letters, digits, - and _; IDNA-encoded as the client does),
    or an IPv4 address."""
    if not host:
        raise ValueError("has no host")
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("has a host of digits and dots that is not valid IPv4") from None
        return
    try:
        encoded = URL.build(scheme="http", host=host).raw_host or ""
    except (ValueError, UnicodeError):
        encoded = ""
    name = encoded.removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            "has a host that is not a valid name (dotted labels of letters, digits, - and _)"
        )


def _check_login(url: str) -> None:
    """A login and secret that HTTP basic authentication can carry, decoded as the client
    decodes them (aiohttp raises on a colon in the login, or a character beyond Latin-1,
    only when it builds a request)."""
    try:
        parts = URL(url)
    except ValueError:  # its message may quote the URL
        raise ValueError("has a login or secret that cannot be read") from None
    login, secret = parts.user or "", parts.password or ""
    if ":" in login:
        raise ValueError("has a login holding a : (%3A), which basic authentication cannot carry")
    try:
        (login + secret).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            "has a login or secret with a character beyond Latin-1, which basic "
            "authentication cannot carry"
        ) from None


def _check_url(url: str) -> str:
    """An http(s) base URL with a host and no path, query or fragment; scheme lowered.

    The relay appends the intake path itself, so a path here would be posted to twice.
    """
    parts = check_http_url(url.strip(), ("http", "https"), SITES["datadoghq.com"])
    scheme = parts.scheme.lower()
    base = urlunsplit((scheme, parts.netloc, "", "", ""))
    path = parts.path.rstrip("/")
    if path.endswith(PIPELINE_PATH):
        fixed = redact_url(urlunsplit((scheme, parts.netloc, path[: -len(PIPELINE_PATH)], "", "")))
        raise ValueError(
            f"ends in the intake path {PIPELINE_PATH}, which the relay adds itself: "
            f'set url = "{fixed}"'
        )
    if path:
        raise ValueError(f"takes no path; the relay posts to URL{PIPELINE_PATH}")
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment")
    return base


def redact_url(url: str) -> str:
    """``url`` with its login and secret, if any, replaced by ``***``: safe to log or print.

    Everything before the last ``@`` goes, wherever it is: in a URL not yet checked a secret
    holding ``/`` or ``?`` ends past the host.
    """
    if "@" not in url:
        return url
    scheme, separator, rest = url.partition("://")
    prefix = f"{scheme}://" if separator else ""
    return f"{prefix}***@{(rest if separator else url).rpartition('@')[2]}"


def proxy_variable(scheme: str) -> tuple[str, str] | None:
    """The proxy variable for ``scheme`` URLs (``HTTPS_PROXY`` for https) and its value, as
    urllib (and so aiohttp and curl) choose it: the lowercase name first, an empty value
    meaning none. NO_PROXY is the caller's (``urllib.request.proxy_bypass``)."""
    value = getproxies().get(scheme)
    if not value:
        return None
    wanted = f"{scheme}_proxy"
    names = sorted(
        (name for name, held in os.environ.items() if name.lower() == wanted and held == value),
        key=lambda name: name != wanted,
    )
    return (names[0] if names else wanted.upper()), value


class UpstreamSettings(_Group):
    # false: a dry run (``serve --dry-run``): events are validated, kept in the history and
    # shown, and nothing is sent.
    enabled: bool = True
    site: Site = "datadoghq.com"
    url: Annotated[str, AfterValidator(_check_url)] | None = None
    api_key: Secret = None
    api_key_file: SecretFile = None
    ca_file: Path | None = None
    compress: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_key(self) -> UpstreamSettings:
        _one_of(self, "api_key", "api_key_file")
        return self

    @property
    def base_url(self) -> str:
        """Where batches go: ``url`` when set, else the site's API host."""
        return self.url or SITES[self.site]

    @property
    def intake_url(self) -> str:
        """The URL batches are posted to, with any password in it redacted: safe to log."""
        return redact_url(self.base_url + PIPELINE_PATH)


class FlusherSettings(_Group):
    batch_max_events: int = Field(default=MAX_EVENTS_PER_REQUEST, ge=1, le=MAX_EVENTS_PER_REQUEST)
    batch_max_bytes: int = Field(default=4_000_000, ge=1024)
    flush_interval_s: float = Field(default=1.0, ge=0)
    # SIGTERM to exit: drain and final flush together; fits a 10 s stop timeout with room.
    shutdown_grace_s: float = Field(default=8.0, ge=0)
    expiry_warning_s: float = Field(default=12 * 3600, gt=0)
    unauthorized_probe_s: float = Field(default=60.0, gt=0)


class RetrySettings(_Group):
    initial_backoff_s: float = Field(default=1.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_backoff_s: float = Field(default=60.0, gt=0)
    # The longest wait an upstream's Retry-After or X-RateLimit-Reset is obeyed for.
    max_wait_s: float = Field(default=600.0, gt=0)
    # Consecutive 5xx/408/timeouts of the same batch before it is sent in halves.
    isolate_after: int = Field(default=5, ge=1)
    # A single event failing alone this many times, over at least single_failure_window_s,
    # while other requests are delivered, goes to the dead letters as upstream_error.
    max_attempts_single: int = Field(default=10, ge=1)
    single_failure_window_s: float = Field(default=600.0, ge=0)
    # Single-event 400s in a row with the same detail, nothing delivered in between, that
    # mean the upstream refuses the requests themselves: delivery pauses instead.
    systemic_reject_after: int = Field(default=20, ge=2)


class WebhookSettings(_Group):
    """CI servers' webhooks (``relay.ingest.webhooks``): a source is served when its secret
    is set; ``POST /webhooks/<source>`` answers 404 otherwise."""

    gitlab_token: Secret = None
    gitlab_token_file: SecretFile = None
    github_secret: Secret = None
    github_secret_file: SecretFile = None
    # How long the keys that deduplicate deliveries are kept (GitHub's manual redelivery and
    # GitLab's retries come within a day), and how many at most (about 40 bytes each).
    dedup_keep_h: float = Field(default=48.0, ge=24)
    dedup_max_keys: int = Field(default=1_000_000, ge=10_000)

    @model_validator(mode="after")
    def _one_secret_each(self) -> WebhookSettings:
        _one_of(self, "gitlab_token", "gitlab_token_file")
        _one_of(self, "github_secret", "github_secret_file")
        return self


class HistorySettings(_Group):
    """The recent history behind ``GET /ui``: a compact record of each settled event."""

    keep_h: float = Field(default=24.0, gt=0)
    # At most this many records (about 300 bytes each); 0 keeps no history.
    max_events: int = Field(default=100_000, ge=0)


class LogSettings(_Group):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class _FromFileAndEnvironment(BaseSettings):
    """Settings read, strongest first, from CI_RELAY_* variables, DD_API_KEY / DD_SITE and
    the TOML file (``load_settings`` names it)."""

    model_config = SettingsConfigDict(env_prefix="CI_RELAY_", env_nested_delimiter="__")

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
            _KnownKeysOnly(settings_cls, env_settings),
            _DatadogEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )


class Settings(_FromFileAndEnvironment):
    """Every setting of the relay; ``config.example.toml`` documents each key."""

    model_config = SettingsConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    flusher: FlusherSettings = Field(default_factory=FlusherSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    log: LogSettings = Field(default_factory=LogSettings)

    def redacted(self) -> dict[str, Any]:
        """The effective settings for the startup log: the API key is never shown."""
        data = self.model_dump(mode="json")
        data["upstream"]["api_key"] = "set (redacted)" if self.upstream.api_key else None
        data["server"]["ingest_token"] = "set (redacted)" if self.server.ingest_token else None
        for secret in ("gitlab_token", "github_secret"):
            held = getattr(self.webhooks, secret) is not None
            data["webhooks"][secret] = "set (redacted)" if held else None
        if self.upstream.url is not None:
            data["upstream"]["url"] = redact_url(self.upstream.url)
        return data


class _KnownKeysOnly(PydanticBaseSettingsSource):
    """The environment's settings less the keys no group has (``CI_RELAY_SERVER__PROT``):
    those are listed by ``unknown_variables`` rather than refused, as a misspelt key of the
    file is, since other programs share the environment."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = self._source()
        groups = _groups(self.settings_cls)
        return {
            group: (
                {key: value for key, value in values.items() if key in groups[group]}
                if isinstance(values, dict) and group in groups
                else values
            )
            for group, values in found.items()
        }


def _groups(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    """The settings' groups of ``model`` and the keys of each."""
    groups = {}
    for name, field in model.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            groups[name] = frozenset(group.model_fields)
    return groups


def _closest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name``, if any is close."""
    found = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return found[0] if found else None


def _nearest_setting(group: str, key: str) -> str | None:
    """The setting a misspelt ``group``/``key`` most likely meant: within the group when it
    is one (so that a shared group name does not make any key look close), else among all."""
    groups = _groups(Settings)
    if group in groups:
        found = _closest(key, sorted(groups[group]))
        return None if found is None else f"{group}.{found}"
    return _closest(f"{group}.{key}", setting_names())


def _did_you_mean(name: str | None) -> str:
    return f"; did you mean {name}?" if name else ""


def _suggestion(key: str) -> str:
    """The closest setting to the file's unknown ``key`` (``group.key`` or a group): the same
    key in another group first (``server.path`` is ``outbox.path``), else the likeliest typo."""
    group, _, name = key.partition(".")
    if not name:
        return _did_you_mean(_closest(group, sorted(_groups(Settings))))
    elsewhere = [f"{other}.{name}" for other, keys in _groups(Settings).items() if name in keys]
    if elsewhere:
        return _did_you_mean(" or ".join(elsewhere))
    return _did_you_mean(_nearest_setting(group, name))


def setting_names() -> list[str]:
    """Every setting as ``group.key``."""
    return [f"{group}.{key}" for group, keys in _groups(Settings).items() for key in sorted(keys)]


def _variable(setting: str) -> str:
    group, _, key = setting.partition(".")
    return f"CI_RELAY_{group.upper()}__{key.upper()}"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``CI_RELAY_*`` variable that names no setting (and is none of the
    runner commands' variables), with the closest known variable."""
    groups = {f"CI_RELAY_{group.upper()}" for group in _groups(Settings)}  # a group as JSON
    known = {_variable(setting) for setting in setting_names()} | groups | set(RUNNER_VARIABLES)
    lines = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()
        if upper.startswith("CI_RELAY_") and upper not in known:
            nearest = _did_you_mean(_nearest_variable(upper, known))
            lines.append(f"{name} is not a setting and is ignored{nearest}")
    return lines


def _nearest_variable(name: str, known: set[str]) -> str | None:
    """The variable an unknown ``CI_RELAY_*`` ``name`` most likely meant: a key of the group
    it names, or (one underscore, a misspelt group) the closest of all."""
    group, _, key = name.removeprefix("CI_RELAY_").lower().partition("__")
    if key and group in _groups(Settings):
        nearest = _nearest_setting(group, key)
        return None if nearest is None else _variable(nearest)
    return _closest(name, sorted(known))


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


class _OutboxOnly(_FromFileAndEnvironment):
    """The outbox group alone, for commands that touch nothing else (the other groups of
    the file and the environment are not read, so a bad daemon setting cannot stop them)."""

    model_config = SettingsConfigDict(extra="ignore")

    outbox: OutboxSettings = Field(default_factory=OutboxSettings)


class ConfigError(UserError):
    """The configuration cannot be used; the message names the key.

    ``problems`` has one line per problem (the message names the first of them).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from ``config_file`` (if any) and the environment, or ConfigError."""
    return _load(Settings, config_file)


def load_outbox_settings(config_file: Path | None = None) -> OutboxSettings:
    """Only the outbox settings, from the same file and environment, or ConfigError."""
    return _load(_OutboxOnly, config_file).outbox


_Loaded = TypeVar("_Loaded", bound=BaseSettings)


def _load(model: type[_Loaded], config_file: Path | None) -> _Loaded:
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file}: {_not_a_file(config_file)}")

    class _FromFile(model):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        loaded: _Loaded = _FromFile()
    except ValidationError as exc:
        raise ConfigError(_describe(exc), [_problem(e) for e in exc.errors()]) from None
    except ValueError as exc:  # a TOML syntax error, with its line and column
        raise ConfigError(f"config file {config_file}: {exc}") from None
    return loaded


def _not_a_file(path: Path) -> str:
    """What ``path`` is, given that it is not a regular file one can read settings from."""
    if path.is_dir():
        return "is a directory, not a file"
    if path.exists():
        return "is not a regular file"
    return "not found"


def _describe(exc: ValidationError) -> str:
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return _problem(exc.errors()[0]) + suffix


def _problem(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        # Only the file can hold an unknown key: the environment's are left out (_KnownKeysOnly).
        message = f"not a setting{_suggestion(key)}"
    return f"invalid config: {key}: {message}"


def writable_directory(directory: Path) -> bool:
    """True when ``directory`` exists and is writable, or its nearest existing parent is
    (the relay creates the missing part)."""
    while not directory.exists() and directory.parent != directory:
        directory = directory.parent
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def origins(config_file: Path | None = None) -> dict[str, str]:
    """Where each setting that is not a default comes from, by ``group.key``.

    The precedence of ``Settings``: a CI_RELAY_* variable, then DD_API_KEY / DD_SITE, then
    the file. A key absent here has its default.
    """
    found: dict[str, str] = {}
    if config_file is not None and config_file.is_file():
        with config_file.open("rb") as file:
            for group, values in tomllib.load(file).items():
                for key in values if isinstance(values, dict) else ():
                    found[f"{group}.{key}"] = f"file {config_file}"
    for name, key in (("DD_SITE", "upstream.site"), ("DD_API_KEY", "upstream.api_key")):
        if os.environ.get(name):
            found[key] = f"environment {name}"
    for name in os.environ:
        if name.upper().startswith("CI_RELAY_") and "__" in name:
            group, _, key = name[len("CI_RELAY_") :].lower().partition("__")
            found[f"{group}.{key}"] = f"environment {name}"
    return found
