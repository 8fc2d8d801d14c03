"""The mistakes of a first hour, each caught with what to do: a misspelt setting in the
environment or the file (with the closest known name), and a port already in use (said
before anything is created)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from relay.config import ConfigError, load_settings, unknown_variables
from relay.testing.process import RelayProcess, relay_free_env, write_config
from tests.helpers import ci_relay


@pytest.mark.parametrize(
    ("variable", "suggested"),
    [
        ("CI_RELAY_SERVER_PORT", "CI_RELAY_SERVER__PORT"),  # one underscore
        ("CI_RELAY_SERVER__PROT", "CI_RELAY_SERVER__PORT"),  # a typo in the key
        ("CI_RELAY_SEVRER__PORT", "CI_RELAY_SERVER__PORT"),  # a typo in the group
        ("ci_relay_upstream__apikey", "CI_RELAY_UPSTREAM__API_KEY"),  # lower case
        ("CI_RELAY_OUTBOX__PATHS", "CI_RELAY_OUTBOX__PATH"),
    ],
)
def test_an_unknown_variable_is_named_with_the_closest_setting(
    variable: str, suggested: str
) -> None:
    """A CI_RELAY_ variable that names no setting is listed with the closest one."""
    lines = unknown_variables({variable: "9000", "PATH": "/bin"})
    assert [f"{variable} is not a setting and is ignored; did you mean {suggested}?"] == lines


def test_a_variable_near_no_setting_is_named_without_a_guess() -> None:
    """A key of a real group that is close to none of its keys gets no suggestion."""
    line = "CI_RELAY_UPSTREAM__QQQQ is not a setting and is ignored"
    assert [line] == unknown_variables({"CI_RELAY_UPSTREAM__QQQQ": "1"})


def test_known_and_runner_variables_are_not_listed() -> None:
    """Settings, whole groups as JSON and the runner commands' variables are all known."""
    environ = {
        "CI_RELAY_SERVER__PORT": "9000",
        "CI_RELAY_LOG": '{"level": "debug"}',
        "CI_RELAY_URL": "http://127.0.0.1:8780",
        "CI_RELAY_TOKEN": "t",
        "CI_RELAY_MARKER_DIR": "marks",
        "CI_RELAY_WEBHOOKS__GITHUB_SECRET": "s",
    }
    assert [] == unknown_variables(environ)


def test_an_unknown_key_in_the_environment_does_not_stop_the_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI_RELAY_SERVER__PROT is left out (and listed), not refused: others share the
    environment; the real settings beside it still apply."""
    monkeypatch.setenv("CI_RELAY_SERVER__PROT", "9000")
    monkeypatch.setenv("CI_RELAY_SERVER__HOST", "127.0.0.2")
    settings = load_settings()
    assert ("127.0.0.2", 8780) == (settings.server.host, settings.server.port)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("[server]\nprot = 9000\n", "server.prot: not a setting; did you mean server.port?"),
        ("[server]\npath = 'x'\n", "server.path: not a setting; did you mean outbox.path?"),
        ("[sever]\nport = 9000\n", "sever: not a setting; did you mean server?"),
        ("[upstream]\nqqqqqqqq = 1\n", "upstream.qqqqqqqq: not a setting"),
    ],
)
def test_an_unknown_key_in_the_file_is_refused_with_the_closest_setting(
    tmp_path: Path, file: str, message: str
) -> None:
    """A key the file does not know stops the relay, naming the likeliest intended one."""
    path = tmp_path / "relay.toml"
    path.write_text(file)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert f"invalid config: {message}" == str(refused.value)


async def test_check_config_refuses_a_misspelt_variable_and_serve_warns(tmp_path: Path) -> None:
    """check-config exits 2 naming the variable and the fix; the relay itself starts, with
    one warning saying the same."""
    config = write_config(
        tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(tmp_path / "o.db")}
    )
    env = {"CI_RELAY_SERVER_PORT": "9000"}
    checked = await ci_relay("check-config", "--config", str(config), env=env)
    assert 2 == checked.status
    line = (
        "CI_RELAY_SERVER_PORT is not a setting and is ignored; did you mean CI_RELAY_SERVER__PORT?"
    )
    assert f"ci-relay: {line}" in checked.stderr.splitlines()
    async with RelayProcess(config, env=env) as relay:
        await relay.terminate()
    assert 1 == [entry["event"] for entry in relay.logs].count(line)


async def test_a_port_in_use_is_said_before_anything_is_created(tmp_path: Path) -> None:
    """A taken port: exit 2 with one line naming the setting, its variable and the process
    holding the port; no outbox file made, no API-key warning for a relay that never ran."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    outbox = tmp_path / "state" / "outbox.db"
    config = write_config(
        tmp_path / "relay.toml", server={"port": port}, outbox={"path": str(outbox)}
    )
    try:
        ran = await ci_relay("serve", "--config", str(config))
    finally:
        holder.close()
    assert 2 == ran.status
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"ci-relay: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert f"(by pid {os.getpid()}: " in line
    assert "server.port" in line
    assert "CI_RELAY_SERVER__PORT" in line
    assert not outbox.parent.exists()
    assert "API key" not in ran.stdout


async def test_the_console_start_line_is_a_short_summary(tmp_path: Path) -> None:
    """On a terminal's console log, the listening line says where it listens, the outbox,
    the upstream and whether a key is set, without the whole configuration (which the JSON
    log and check-config keep)."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "o.db")},
        log={"format": "console"},
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        env=relay_free_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            while b"listening" not in (line := await process.stdout.readline()):
                assert line, "the relay ended before listening"
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    shown = re.sub(r"\x1b\[[0-9;]*m", "", line.decode()).strip()
    assert len(shown) < 400, shown
    for part in ("host=127.0.0.1", f"outbox={tmp_path / 'o.db'}", "api_key=False"):
        assert part in shown
    assert "config=" not in shown
