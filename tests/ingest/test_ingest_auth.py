"""The listener's ingest token and TLS: who may post, read /metrics and /status."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import ssl
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from relay.config import OutboxSettings
from relay.keyfiles import KeyFile
from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import event, request
from tests.helpers import JSON, RunningRelay, ci_relay, closed_port, serving, wait_until
from tests.ops.test_status import ci_relay_status

TOKEN = "ingest-token-4f1d2c9a7b"  # noqa: S105
BODY = orjson.dumps(request(event("pipeline")))


@pytest.fixture
async def guarded(outbox_settings: OutboxSettings) -> AsyncIterator[RunningRelay]:
    """The relay's API with an ingest token set."""
    token = KeyFile("server.ingest_token", SecretStr(TOKEN), None)
    async with serving(outbox_settings, ingest_token=token) as running:
        yield running


async def _post(relay: RunningRelay, **headers: str) -> tuple[int, dict[str, object]]:
    async with relay.client.post(relay.url, data=BODY, headers=JSON | headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_ingest_without_the_token_is_refused_403_in_datadogs_shape(
    guarded: RunningRelay,
) -> None:
    """A request without the token, or with a wrong one, gets 403 in Datadog's shape and
    nothing is stored."""
    missing = await _post(guarded)
    wrong = await _post(guarded, **{"DD-API-KEY": TOKEN + "x"})
    wrong_bearer = await _post(guarded, Authorization=f"Bearer {TOKEN[:-1]}")
    not_bearer = await _post(guarded, Authorization=f"Basic {TOKEN}")
    for status, body in (missing, wrong, wrong_bearer, not_bearer):
        assert 403 == status
        errors = body["errors"]
        assert isinstance(errors, list)
        assert ("403", "Forbidden") == (errors[0]["status"], errors[0]["title"])
        assert "DD-API-KEY" in errors[0]["detail"]
    await guarded.outbox.refresh_counts()
    assert 0 == guarded.outbox.counts.events


async def test_ingest_with_the_token_in_dd_api_key_or_bearer_is_accepted(
    guarded: RunningRelay,
) -> None:
    """The token in DD-API-KEY, as Datadog clients send their key, or as a bearer token, passes."""
    by_key = await _post(guarded, **{"DD-API-KEY": TOKEN})
    by_bearer = await _post(guarded, Authorization=f"Bearer {TOKEN}")
    assert [(202, {}), (202, {})] == [by_key, by_bearer]
    await guarded.outbox.refresh_counts()
    assert 2 == guarded.outbox.counts.events


async def test_probes_stay_open_and_metrics_and_status_follow_the_token(
    guarded: RunningRelay,
) -> None:
    """/health and /ready answer without the token; /metrics and /status only with it, and a
    refusal is counted under the reason unauthorized."""
    await _post(guarded)
    open_answers, closed_answers, with_token = [], [], []
    for path in ("/health", "/ready"):
        async with guarded.client.get(guarded.base_url + path) as resp:
            open_answers.append(resp.status)
    for path in ("/metrics", "/status"):
        async with guarded.client.get(guarded.base_url + path) as resp:
            closed_answers.append(resp.status)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with guarded.client.get(guarded.base_url + path, headers=auth) as resp:
            with_token.append(resp.status)
            text = await resp.text()
    assert ([200, 200], [403, 403], [200, 200]) == (open_answers, closed_answers, with_token)
    async with guarded.client.get(
        guarded.base_url + "/metrics", headers={"DD-API-KEY": TOKEN}
    ) as resp:
        metrics = await resp.text()
    # One ingest request and two reads were refused; the /status document never shows the token.
    assert 'ci_relay_requests_refused_total{reason="unauthorized"} 3.0' in metrics
    assert TOKEN not in metrics + text


async def test_no_token_set_means_no_check(relay: RunningRelay) -> None:
    """Without an ingest token, a request without any credential is accepted as before."""
    assert (202, {}) == await _post(relay)


def _relay_config(tmp_path: Path, **server: object) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": closed_port()} | server,
        outbox={"path": str(tmp_path / "outbox.db")},
    )


async def test_open_listener_without_token_warns_at_start_and_in_check_config(
    tmp_path: Path,
) -> None:
    """Listening on a non-loopback address without a token logs a warning, and check-config
    says it; with a token file neither does."""
    open_config = _relay_config(tmp_path, host="0.0.0.0")  # noqa: S104
    async with RelayProcess(open_config) as relay:
        await relay.terminate()  # every start-up line read
        warned = [line["event"] for line in relay.logs if line.get("level") == "warning"]
    checked_open = await _check_config(open_config)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    guarded_config = _relay_config(
        tmp_path,
        host="0.0.0.0",  # noqa: S104
        ingest_token_file=str(token_file),
    )
    async with RelayProcess(guarded_config) as relay:
        await relay.terminate()
        warned_guarded = [line["event"] for line in relay.logs if line.get("level") == "warning"]
        logs = orjson.dumps(relay.logs).decode()
    checked_guarded = await _check_config(guarded_config)
    assert any("without an ingest token" in line for line in warned), warned
    assert "warning: listening beyond loopback without an ingest token" in checked_open
    assert [] == [line for line in warned_guarded if "ingest token" in line]
    assert "ingest token" not in checked_guarded
    assert TOKEN not in logs + checked_guarded


async def _check_config(config: Path) -> str:
    ran = await ci_relay("check-config", "--config", str(config))
    assert 0 == ran.status, ran
    return ran.stdout + ran.stderr


async def test_status_command_sends_the_configured_token(tmp_path: Path) -> None:
    """``ci-relay status`` sends the token of its config and is let in (exit 7: no API key);
    without it, it says that the relay refuses it (exit 2)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = _relay_config(tmp_path, ingest_token_file=str(token_file))
    async with RelayProcess(config):
        shown = await ci_relay_status("--config", str(config))
        refused = await ci_relay_status("--url", f"http://127.0.0.1:{_port(config)}")
    assert 7 == shown.status, shown.stderr
    assert (2, True) == (refused.status, "refuses" in refused.stderr), refused.stderr


def _port(config: Path) -> int:
    return int(config.read_text().split("port = ")[1].split()[0])


async def test_a_rotated_token_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    """A new token written to the token file is required within seconds; the old one is refused."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = _relay_config(tmp_path, ingest_token_file=str(token_file))
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        url = relay.url

        async def status_with(token: str) -> int:
            headers = JSON | {"DD-API-KEY": token}
            async with client.post(url, data=BODY, headers=headers) as resp:
                return resp.status

        before = await status_with(TOKEN)
        (tmp_path / "token.new").write_text("rotated-token-88")
        (tmp_path / "token.new").rename(token_file)
        await wait_until(
            lambda: bool(relay.events("key file read: a new value is in force")),
            10,
            "the token file read again",
        )
        after = (await status_with(TOKEN), await status_with("rotated-token-88"))
    assert (202, (403, 202)) == (before, after)


async def test_listener_serves_tls_with_the_configured_certificate(tmp_path: Path) -> None:
    """With tls_cert_file and tls_key_file, runners post over https and get 202."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    config = _relay_config(
        tmp_path, tls_cert_file=str(tmp_path / "tls.crt"), tls_key_file=str(tmp_path / "tls.key")
    )
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        https = relay.url.replace("http://", "https://")
        async with client.post(https, data=BODY, headers=JSON, ssl=trusted) as resp:
            answer = (resp.status, await resp.read())
        listening = relay.events("listening")[0]
    assert ((202, b"{}"), True) == (answer, listening["tls"])


@pytest.mark.parametrize(
    ("group", "settings", "named"),
    [
        ("upstream", {"api_key_file": "missing-key"}, "upstream.api_key_file"),
        ("upstream", {"ca_file": "empty.pem"}, "upstream.ca_file"),
        ("server", {"ingest_token_file": "missing-token"}, "server.ingest_token_file"),
        ("server", {"tls_cert_file": "empty.pem", "tls_key_file": "empty.pem"}, "tls_cert_file"),
    ],
)
async def test_an_unusable_key_or_certificate_file_stops_the_start(
    tmp_path: Path, group: str, settings: dict[str, str], named: str
) -> None:
    """A key file, CA file or certificate that cannot be used stops the relay at start with
    one line naming the setting, exit status 2."""
    (tmp_path / "empty.pem").write_text("")
    groups: dict[str, dict[str, object]] = {
        "server": {"port": 0},
        "outbox": {"path": str(tmp_path / "outbox.db")},
    }
    groups[group] = groups.get(group, {}) | {k: str(tmp_path / v) for k, v in settings.items()}
    config = write_config(tmp_path / "relay.toml", **groups)
    ran = await ci_relay("serve", "--config", str(config), timeout_s=30)
    lines = ran.stderr.strip().splitlines()
    assert (2, 1) == (ran.status, len(lines)), lines
    assert named in lines[0]


KEY_FORMATS = {
    "PKCS#8": serialization.PrivateFormat.PKCS8,
    "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
}


def _encrypted_tls_files(tmp_path: Path, key_format: serialization.PrivateFormat) -> Path:
    """A config whose listener certificate's key is encrypted with a pass phrase."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        key_format,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    (tmp_path / "tls.key").write_bytes(encrypted)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    return _relay_config(
        tmp_path, tls_cert_file=str(tmp_path / "tls.crt"), tls_key_file=str(tmp_path / "tls.key")
    )


def _take_terminal() -> None:
    # In the child, in the session of its own start_new_session made: stdin, the terminal,
    # becomes its controlling terminal, the one OpenSSL would ask a pass phrase on.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_terminal(main: int) -> str:
    """What the child wrote to the terminal, read without waiting."""
    os.set_blocking(main, False)
    shown = b""
    with contextlib.suppress(BlockingIOError, OSError):  # OSError: EIO once the child is gone
        while chunk := os.read(main, 4096):
            shown += chunk
    return shown.decode(errors="replace")


async def _serve_on_a_terminal(config: Path) -> tuple[int | None, list[str], str]:
    """``ci-relay serve`` on a terminal: its exit status (None when it was still running after
    30 s, and killed), its stderr lines, and what it wrote to the terminal."""
    # Not tests.helpers.relay_command: the child's stdin is a terminal it takes as its
    # controlling one in a session of its own, and a child that hangs (on a pass phrase
    # prompt) must still report what it showed on that terminal rather than only time out.
    main, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(config),
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=relay_free_env(),
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(terminal)
        status: int | None
        try:
            _, err = await asyncio.wait_for(process.communicate(), timeout=30)
            status = process.returncode
        except TimeoutError:
            process.kill()
            _, err = await process.communicate()
            status = None
        return status, err.decode().strip().splitlines(), _read_terminal(main)
    finally:
        os.close(main)


@pytest.mark.parametrize("key_format", KEY_FORMATS.values(), ids=KEY_FORMATS.keys())
async def test_an_encrypted_tls_key_stops_the_start_without_asking_for_a_pass_phrase(
    tmp_path: Path, key_format: serialization.PrivateFormat
) -> None:
    """On a terminal, an encrypted tls_key_file stops the relay with one line naming the
    setting and saying the key is encrypted, exit 2, and nothing asks for a pass phrase."""
    config = _encrypted_tls_files(tmp_path, key_format)
    status, lines, shown = await _serve_on_a_terminal(config)
    assert (2, 1, "") == (status, len(lines), shown), (lines, shown)
    assert "server.tls_key_file" in lines[0]
    assert "encrypted" in lines[0]


async def test_check_config_refuses_an_encrypted_tls_key(tmp_path: Path) -> None:
    """check-config reports an encrypted tls_key_file as the start does: one line, exit 2."""
    config = _encrypted_tls_files(tmp_path, serialization.PrivateFormat.PKCS8)
    ran = await ci_relay("check-config", "--config", str(config))
    lines = ran.stderr.strip().splitlines()
    assert (2, 1) == (ran.status, len(lines)), ran
    assert "server.tls_key_file" in lines[0]
    assert "encrypted" in lines[0]


@pytest.mark.parametrize(
    "named", ["upstream.ca_file", "server.tls_key_file", "server.tls_cert_file"]
)
@pytest.mark.parametrize("command", ["serve", "check-config"])
async def test_a_certificate_or_key_that_is_a_fifo_is_refused_not_waited_on(
    tmp_path: Path, named: str, command: str
) -> None:
    """A CA, certificate or private key file that is a FIFO (no regular file) is refused at
    once with one line naming the setting, exit 2: the start never waits for a writer."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    os.mkfifo(tmp_path / "fifo")
    group, key = named.split(".")
    groups: dict[str, dict[str, object]] = {"server": {"port": 0}, "upstream": {}}
    if group == "server":  # the certificate and its key go together
        groups["server"] |= {
            "tls_cert_file": str(tmp_path / "tls.crt"),
            "tls_key_file": str(tmp_path / "tls.key"),
        }
    groups[group][key] = str(tmp_path / "fifo")
    config = write_config(
        tmp_path / "relay.toml", outbox={"path": str(tmp_path / "outbox.db")}, **groups
    )
    ran = await ci_relay(command, "--config", str(config), timeout_s=15)
    lines = ran.stderr.strip().splitlines()
    assert (2, 1) == (ran.status, len(lines)), lines
    assert named in lines[0]
    assert "FIFO" in lines[0]
