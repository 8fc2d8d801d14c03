"""deploy/systemd/ci-relay.service: accepted by systemd, hardened, and its command line starts a
relay that reads its key from its credential and sends it."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.config import FlusherSettings
from relay.testing.process import relay_free_env, write_config
from relay.testing.samples import request
from tests.fake_intake import FakeIntake
from tests.helpers import API_KEY, JSON, closed_port, jobs, wait_until

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "ci-relay.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# Where the unit expects the relay (docs/deploy.md installs it there), and where it is here.
INSTALLED = "/opt/ci-relay/bin/ci-relay"
HERE = str(Path(sys.executable).parent / "ci-relay")


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _service() -> dict[str, list[str]]:
    """The [Service] section, each key with all its values in order."""
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("[") or "=" not in line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("broken", [False, True], ids=["unit", "misspelt-copy"])
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path, broken: bool) -> None:
    """systemd-analyze verify accepts the unit without a word; a misspelt key makes it speak."""
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED in text
    text = text.replace(INSTALLED, HERE)  # verify requires the program to exist
    if broken:
        text = text.replace("ProtectSystem=strict", "ProtectSystm=strict")
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")
    result = _verify(unit)
    assert (0, not broken) == (result.returncode, result.stdout + result.stderr == "")


def test_the_unit_is_hardened_and_keeps_its_state_and_key_apart() -> None:
    """A dynamic user, a state directory for the outbox, the key as a credential, the usual
    hardening, and a stop timeout longer than the relay's shutdown budget."""
    service = _service()
    expected = {
        "DynamicUser": ["yes"],
        "StateDirectory": ["ci-relay"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
    }
    assert expected == {key: service.get(key) for key in expected}
    (credential,) = service["LoadCredential"]
    assert credential.startswith("datadog-api-key:")
    (stop_timeout,) = service["TimeoutStopSec"]
    assert float(stop_timeout) > FlusherSettings().shutdown_grace_s


def _expand(value: str, specifiers: dict[str, str]) -> str:
    """``value`` with systemd's specifiers (``%d``, ``%S``, ...) replaced; an unknown one fails."""

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        assert letter in specifiers, f"specifier %{letter} in {value!r}"
        return specifiers[letter]

    return re.sub("%(.)", one, value)


def test_the_relay_reads_the_credential_itself_without_a_shell() -> None:
    """ExecStart runs the installed relay directly (no shell, no variable expansion), and the
    key reaches it as the path of the credential, never as a variable holding the key."""
    service = _service()
    (exec_start,) = service["ExecStart"]
    assert INSTALLED == shlex.split(exec_start)[0]
    assert "$" not in exec_start
    (credential,) = service["LoadCredential"]
    name = credential.partition(":")[0]
    environment = dict(line.partition("=")[::2] for line in service["Environment"])
    assert f"%d/{name}" == environment.get("CI_RELAY_UPSTREAM__API_KEY_FILE")
    assert set() == environment.keys() & {"DD_API_KEY", "CI_RELAY_UPSTREAM__API_KEY"}


async def test_the_units_command_line_sends_the_key_of_its_credential(tmp_path: Path) -> None:
    """The unit's ExecStart and Environment, run as systemd would (%d a credentials directory,
    %S a state directory), start a relay that reads the credential file itself and delivers with
    its key, the file's trailing newline dropped."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "datadog-api-key").write_text(API_KEY + "\n", encoding="utf-8")
    state = tmp_path / "state"
    (state / "ci-relay").mkdir(parents=True)  # StateDirectory=ci-relay
    specifiers = {"d": str(credentials), "S": str(state), "%": "%"}
    service = _service()
    port = closed_port()
    async with FakeIntake() as intake:
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": port},
            outbox={"path": str(tmp_path / "outbox.db")},
            upstream={"url": intake.url},
            flusher={"flush_interval_s": 0.05},
        )
        (exec_start,) = service["ExecStart"]
        command = [_expand(word, specifiers) for word in shlex.split(exec_start)]
        command = [HERE if word == INSTALLED else word for word in command]
        command = [str(config) if word == "/etc/ci-relay/relay.toml" else word for word in command]
        env = relay_free_env()
        for line in service["Environment"]:
            name, _, value = line.partition("=")
            env[name] = _expand(value, specifiers)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.DEVNULL
        )
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/api/v2/ci/pipeline"
                await wait_until(lambda: _listening(port), 20, "the relay to listen")
                body = orjson.dumps(request(*jobs(1, "unit")))
                async with session.post(url, data=body, headers=JSON) as resp:
                    assert 202 == resp.status
                await wait_until(lambda: bool(intake.received), 20, "a delivery")
        finally:
            proc.terminate()
            assert 0 == await asyncio.wait_for(proc.wait(), 20)
    assert API_KEY == intake.received[0].headers["DD-API-KEY"]
    assert (state / "ci-relay" / "outbox.db").exists()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
