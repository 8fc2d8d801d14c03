"""Settings: defaults, the example file, the TOML file, the environment, and refusals."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, get_args

import aiohttp
import orjson
import pytest
from pydantic import BaseModel

from relay.config import ConfigError, Settings, load_settings
from relay.contract.intake import Site
from relay.testing.process import RELAY_VARIABLES, RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import FakeIntake, Status
from tests.helpers import JSON, ci_relay

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
# A stand-in API key the test looks for in places it must never appear.
SECRET = "some-secret-value"  # noqa: S105

SITE_URLS = {
    "datadoghq.com": "https://api.datadoghq.com",
    "us3.datadoghq.com": "https://api.us3.datadoghq.com",
    "us5.datadoghq.com": "https://api.us5.datadoghq.com",
    "datadoghq.eu": "https://api.datadoghq.eu",
    "ap1.datadoghq.com": "https://api.ap1.datadoghq.com",
    "ap2.datadoghq.com": "https://api.ap2.datadoghq.com",
    "ddog-gov.com": "https://api.ddog-gov.com",
    "us2.ddog-gov.com": "https://api.us2.ddog-gov.com",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CI_RELAY_* or DD_* variable of the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith(RELAY_VARIABLES):
            monkeypatch.delenv(name)


def _groups() -> dict[str, type[BaseModel]]:
    """Every settings group (server, outbox, ...) and its pydantic model."""
    groups: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type), name
        assert issubclass(model, BaseModel), name
        groups[name] = model
    return groups


def _documented_keys(text: str) -> set[tuple[str, str]]:
    """(group, key) of every key the file sets or shows commented out (``# key = ...``)."""
    documented: set[tuple[str, str]] = set()
    group = ""
    for line in text.splitlines():
        if header := re.fullmatch(r"\s*\[(\w+)\]\s*", line):
            group = header[1]
        elif key := re.match(r"\s*#?\s*(\w+)\s*=", line):
            documented.add((group, key[1]))
    return documented


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without file or environment the relay listens on 127.0.0.1:8780, FULL sync, US1 site."""
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    settings = load_settings(None)
    assert ("127.0.0.1", 8780) == (settings.server.host, settings.server.port)
    assert "FULL" == settings.outbox.synchronous
    assert "datadoghq.com" == settings.upstream.site
    assert "https://api.datadoghq.com" == settings.upstream.base_url
    assert settings.upstream.api_key is None
    expected_path = Path.home() / ".local" / "state" / "ci-relay" / "outbox.db"
    assert expected_path == settings.outbox.path


def test_default_outbox_path_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default outbox lives under $XDG_STATE_HOME/ci-relay when that variable is set."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert tmp_path / "ci-relay" / "outbox.db" == load_settings(None).outbox.path


def test_example_config_loads_and_equals_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.example.toml loads, and its values are the defaults (its path with ~ expanded)."""
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    example = load_settings(EXAMPLE)
    defaults = load_settings(None)
    example_data = example.model_dump(mode="json")
    default_data = defaults.model_dump(mode="json")
    example_path = example_data["outbox"].pop("path")
    default_data["outbox"].pop("path")
    assert default_data == example_data
    assert str(Path.home() / ".local" / "state" / "ci-relay" / "outbox.db") == example_path
    assert "~" not in example_path


def test_example_config_documents_every_key() -> None:
    """Every key of every settings group appears in config.example.toml, set or commented out."""
    expected = {(group, key) for group, model in _groups().items() for key in model.model_fields}
    documented = _documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    assert set() == expected - documented


def test_toml_file_values_apply(tmp_path: Path) -> None:
    """Values from the TOML file replace the defaults, in every group."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"host": "0.0.0.0", "port": 9000},  # noqa: S104
        outbox={"path": str(tmp_path / "o.db"), "synchronous": "NORMAL", "max_events": 10},
        upstream={"site": "us5.datadoghq.com", "compress": True},
        flusher={"batch_max_events": 50},
        retry={"multiplier": 3.0},
        log={"format": "json", "level": "debug"},
    )
    settings = load_settings(config)
    actual = (
        settings.server.host,
        settings.server.port,
        settings.outbox.path,
        settings.outbox.synchronous,
        settings.outbox.max_events,
        settings.upstream.site,
        settings.upstream.compress,
        settings.flusher.batch_max_events,
        settings.retry.multiplier,
        settings.log.format,
        settings.log.level,
    )
    expected = (
        "0.0.0.0",  # noqa: S104
        9000,
        tmp_path / "o.db",
        "NORMAL",
        10,
        "us5.datadoghq.com",
        True,
        50,
        3.0,
        "json",
        "debug",
    )
    assert expected == actual


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI_RELAY_SERVER__PORT overrides the port of the file; the file's other keys stay."""
    config = write_config(tmp_path / "relay.toml", server={"host": "127.0.0.2", "port": 9000})
    monkeypatch.setenv("CI_RELAY_SERVER__PORT", "9001")
    settings = load_settings(config)
    assert ("127.0.0.2", 9001) == (settings.server.host, settings.server.port)


def test_dd_api_key_and_dd_site_are_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DD_API_KEY sets the API key and DD_SITE the site, over the file's site."""
    config = write_config(tmp_path / "relay.toml", upstream={"site": "us3.datadoghq.com"})
    monkeypatch.setenv("DD_API_KEY", "dd-key")
    monkeypatch.setenv("DD_SITE", "datadoghq.eu")
    upstream = load_settings(config).upstream
    assert upstream.api_key is not None
    assert ("dd-key", "datadoghq.eu", "https://api.datadoghq.eu") == (
        upstream.api_key.get_secret_value(),
        upstream.site,
        upstream.base_url,
    )


def test_ci_relay_api_key_wins_over_dd_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI_RELAY_UPSTREAM__API_KEY takes precedence over DD_API_KEY."""
    monkeypatch.setenv("DD_API_KEY", "dd-key")
    monkeypatch.setenv("CI_RELAY_UPSTREAM__API_KEY", "relay-key")
    api_key = load_settings(None).upstream.api_key
    assert api_key is not None
    assert "relay-key" == api_key.get_secret_value()


def test_upstream_url_overrides_site(tmp_path: Path) -> None:
    """upstream.url replaces the site's API host as the base URL (without a trailing slash)."""
    config = write_config(
        tmp_path / "relay.toml",
        upstream={"site": "datadoghq.eu", "url": "http://127.0.0.1:9000/"},
    )
    assert "http://127.0.0.1:9000" == load_settings(config).upstream.base_url


def test_sites_are_the_eight_documented_ones() -> None:
    """The accepted sites are exactly Datadog's eight documented sites."""
    assert set(SITE_URLS) == set(get_args(Site))


@pytest.mark.parametrize(("site", "url"), sorted(SITE_URLS.items()))
def test_each_site_maps_to_its_api_url(
    site: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each site, from the file or from DD_SITE, sends to https://api.<site>."""
    config = write_config(tmp_path / "relay.toml", upstream={"site": site})
    assert url == load_settings(config).upstream.base_url
    monkeypatch.setenv("DD_SITE", site)
    assert url == load_settings(None).upstream.base_url


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ('[outbox]\nsynchronous = "OFF"\n', "outbox.synchronous"),
        ("[server]\nprot = 8780\n", "server.prot"),
        ('[upstream]\nsite = "datadoghq.example"\n', "upstream.site"),
        ("[nosuchgroup]\nkey = 1\n", "nosuchgroup"),
    ],
    ids=["port-out-of-range", "synchronous-off", "unknown-key", "unknown-site", "unknown-group"],
)
def test_invalid_value_names_the_key(text: str, named: str, tmp_path: Path) -> None:
    """An invalid or unknown key raises ConfigError whose message names the key."""
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert named in str(raised.value)


def test_invalid_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid CI_RELAY_* value raises ConfigError naming its key."""
    monkeypatch.setenv("CI_RELAY_SERVER__PORT", "70000")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(None)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error raises ConfigError naming the file and the line."""
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = \n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert (True, True) == (str(config) in message, "line 2" in message)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    """A config file that does not exist raises ConfigError naming it."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as raised:
        load_settings(missing)
    message = str(raised.value)
    assert (True, True) == (str(missing) in message, "not found" in message)


@pytest.mark.parametrize(
    ("text", "named"),
    [("[server]\nport = 70000\n", "server.port"), ("[server]\nprot = 8780\n", "server.prot")],
    ids=["port-out-of-range", "unknown-key"],
)
async def test_cli_invalid_config_exits_2_with_one_line(
    text: str, named: str, tmp_path: Path
) -> None:
    """`ci-relay serve` with an invalid config prints one line naming the key and exits 2."""
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    result = await ci_relay("serve", "--config", str(config), timeout_s=30)
    lines = result.stderr.splitlines()
    assert (2, 1, "") == (result.status, len(lines), result.stdout), result.stderr
    assert named in lines[0]


def test_redacted_settings_hide_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.redacted() (the startup log's view) and repr() never contain the API key."""
    monkeypatch.setenv("DD_API_KEY", SECRET)
    settings = load_settings(None)
    redacted = settings.redacted()
    assert "set (redacted)" == redacted["upstream"]["api_key"]
    assert SECRET not in orjson.dumps(redacted).decode()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


async def deliver_once(tmp_path: Path, url: str, api_key: str, intake: FakeIntake) -> RelayProcess:
    """Run the daemon, sending to ``url`` with ``DD_API_KEY``, until ``intake`` is sent a batch."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": url},
        flusher={"flush_interval_s": 0.0},
    )
    relay = RelayProcess(config, env={"DD_API_KEY": api_key})
    async with relay:
        async with (
            aiohttp.ClientSession() as client,
            client.post(relay.url, data=orjson.dumps(request(event("job"))), headers=JSON) as resp,
        ):
            assert 202 == resp.status
        await intake.wait_for_requests(1, timeout_s=20)
        assert 0 == await relay.terminate()
    return relay


async def test_api_key_never_in_daemon_logs(tmp_path: Path, intake: FakeIntake) -> None:
    """The daemon sends DD_API_KEY upstream but never writes it to its log."""
    intake.default = Status(403, detail="Forbidden")
    relay = await deliver_once(tmp_path, intake.url, SECRET, intake)
    assert SECRET == intake.received[0].headers["DD-API-KEY"]
    listening: dict[str, Any] = relay.events("listening")[0]
    assert "set (redacted)" == listening["config"]["upstream"]["api_key"]
    leaks = [entry for entry in relay.logs if SECRET in orjson.dumps(entry).decode()]
    assert [] == leaks


# --- upstream.url and upstream.api_key are checked at start -------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.datadoghq.com", "https://api.datadoghq.com"),
        ("https://api.datadoghq.com/", "https://api.datadoghq.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("HTTP://127.0.0.1:9000/", "http://127.0.0.1:9000"),
    ],
)
def test_upstream_url_accepted_forms(url: str, expected: str, tmp_path: Path) -> None:
    """An http or https URL with a host and no path beyond / is the base URL, scheme lowered."""
    config = tmp_path / "relay.toml"
    config.write_text(f'[upstream]\nurl = "{url}"\n', encoding="utf-8")
    assert expected == load_settings(config).upstream.base_url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://intake.example", "http:// or https://"),
        ("intake.example:9000", "http:// or https://"),
        ("https://", "host"),
        ("https://proxy.example/datadog", "no path"),
        ("https://api.datadoghq.com/api/v2/ci/pipeline", 'url = "https://api.datadoghq.com"'),
        ("https://api.datadoghq.com?x=1", "query"),
    ],
    ids=["ftp", "no-scheme", "no-host", "path", "intake-path", "query"],
)
def test_upstream_url_refused_with_the_fix(url: str, said: str, tmp_path: Path) -> None:
    """A URL the relay cannot post to is refused at start, naming upstream.url and the fix."""
    message = _upstream_url_refusal(url, tmp_path)
    assert (True, True, 1) == (
        "upstream.url" in message,
        said in message,
        len(message.splitlines()),
    )


def _upstream_url_refusal(url: str, tmp_path: Path) -> str:
    """The message that refuses ``upstream.url = url`` in a config file."""
    config = tmp_path / "relay.toml"
    config.write_text(f"[upstream]\nurl = {json.dumps(url)}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    return str(raised.value)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:65536", "port"),
        ("http://127.0.0.1:-1", "port"),
        ("http://127.0.0.1:abc", "port"),
        ("http://127.0.0.1:0", "port"),
        ("http://intake example", "blank"),
        ("http://intake%00.example", "host"),
        ("http://256.1.1.1", "IPv4"),
        ("http://[::1", "IPv6"),
        ("http://[::zz]:80", "IPv6"),
        ("http://::1:80", "brackets"),
        ("http://-intake.example", "host"),
    ],
)
def test_upstream_url_with_a_bad_host_or_port_is_refused(
    url: str, said: str, tmp_path: Path
) -> None:
    """A host or port no request can reach is refused at start, naming upstream.url."""
    message = _upstream_url_refusal(url, tmp_path)
    assert (True, True, 1) == (
        "upstream.url" in message,
        said in message,
        len(message.splitlines()),
    )


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://user:pa/ss@host", ["user", "pa", "ss"]),
        ("http://user:pa?ss@host", ["user", "pa", "ss"]),
        ("http://user:pa#ss@host", ["user", "pa", "ss"]),
        ("http://user:pa ss@host", ["user", "pa", "ss"]),
        ("http://user:pass@host:99999", ["user", "pass"]),
        ("http://user:pass@[::1", ["user", "pass"]),
        ("http://us%3Aer:pass@127.0.0.1:9000", ["us", "er", "pass"]),
        ("http://user:%E2%82%AC@127.0.0.1:9000", ["user", "%E2", "%82", "%AC"]),
        ("http://user:pass", ["user", "pass"]),
        ("user:pass@host", ["user", "pass"]),
    ],
    ids=[
        "slash",
        "question",
        "hash",
        "space",
        "port",
        "ipv6",
        "colon-in-user",
        "non-latin-1",
        "no-host",
        "no-scheme",
    ],
)
async def test_upstream_url_refusal_never_echoes_the_userinfo(
    url: str, parts: list[str], tmp_path: Path
) -> None:
    """A refused upstream.url is one line naming the key and quoting no part of the user or
    password, however the URL is broken."""
    config = write_config(tmp_path / "relay.toml", upstream={"url": url})
    result = await ci_relay("check-config", "--config", str(config), timeout_s=30)
    (line,) = result.stderr.splitlines()
    shown = line.removeprefix("ci-relay: invalid config: upstream.url: ")
    assert (2, True) == (result.status, "upstream.url" in line), line
    assert [] == [part for part in parts if part in shown], line


async def test_a_bad_upstream_port_is_refused_at_start_not_after_accepting_events(
    tmp_path: Path,
) -> None:
    """serve with upstream.url on port 99999 stops at start with one line and exit 2, before
    it listens (it used to accept events, then end with status 1 when delivery began)."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": "http://127.0.0.1:99999", "api_key": SECRET},
    )
    ran = await ci_relay("serve", "--config", str(config), timeout_s=20)
    lines = ran.stderr.splitlines()
    assert (2, 1, "") == (ran.status, len(lines), ran.stdout), ran.stderr
    assert "upstream.url" in lines[0]
    assert "port" in lines[0]
    assert not (tmp_path / "outbox.db").exists()


def test_redacted_settings_hide_url_credentials(tmp_path: Path) -> None:
    """Neither the login nor the password of upstream.url appears in the start-up view of the
    settings."""
    config = tmp_path / "relay.toml"
    config.write_text(f'[upstream]\nurl = "https://relay:{SECRET}@proxy.example:8443"\n')
    settings = load_settings(config)
    redacted = settings.redacted()
    assert "https://***@proxy.example:8443" == redacted["upstream"]["url"]
    assert SECRET not in orjson.dumps(redacted).decode()


@pytest.mark.parametrize("raw", [f"{SECRET}\n", f"  {SECRET}\r\n", f"\t{SECRET} "])
def test_api_key_surrounding_whitespace_is_stripped(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key read from a file with a trailing newline (a Kubernetes secret) is used stripped."""
    monkeypatch.setenv("DD_API_KEY", raw)
    api_key = load_settings(None).upstream.api_key
    assert api_key is not None
    assert SECRET == api_key.get_secret_value()


@pytest.mark.parametrize("raw", ["abc\ndef", "abc\x00def", "clé", "abc\x7fdef"])
def test_api_key_with_control_or_non_ascii_characters_is_refused(raw: str, tmp_path: Path) -> None:
    """A key that cannot be sent as a header is a config error naming upstream.api_key, unechoed."""
    config = tmp_path / "relay.toml"
    # JSON's \\u escapes are TOML's too, so every character reaches the settings as written.
    config.write_text(f"[upstream]\napi_key = {json.dumps(raw)}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert (True, False) == ("upstream.api_key" in message, raw in message)


async def test_cli_refuses_a_key_with_a_newline_inside(tmp_path: Path) -> None:
    """`ci-relay serve` with a key holding a newline exits 2 with one line, key unechoed."""
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(tmp_path / "o.db")})
    key = {"DD_API_KEY": f"{SECRET}\n{SECRET}"}
    result = await ci_relay("serve", "--config", str(config), env=key, timeout_s=30)
    lines = result.stderr.splitlines()
    assert (2, 1) == (result.status, len(lines)), result.stderr
    assert (True, False) == ("upstream.api_key" in lines[0], SECRET in result.stderr)


async def test_start_up_line_names_the_effective_url_without_credentials(
    tmp_path: Path, intake: FakeIntake
) -> None:
    """The listening line gives the URL batches go to, its login and password redacted
    everywhere."""
    intake.default = Status(403, detail="Forbidden")
    intake_url = intake.url
    url = intake_url.replace("http://", f"http://relay:{SECRET}@")
    relay = await deliver_once(tmp_path, url, "k", intake)
    listening: dict[str, Any] = relay.events("listening")[0]
    expected = intake_url.replace("http://", "http://***@") + "/api/v2/ci/pipeline"
    assert expected == listening["upstream"]
    assert [] == [entry for entry in relay.logs if SECRET in orjson.dumps(entry).decode()]
