"""The upstream client behind an egress proxy (HTTPS_PROXY, NO_PROXY) and an intercepting
CA (upstream.ca_file), against a TLS intake on 127.0.0.1 with a CA of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Self

import aiohttp
import orjson
import pytest
import trustme
from pydantic import SecretStr

from relay.config import ConfigError, UpstreamSettings
from relay.delivery.upstream import Delivered, Outcome, Retry, Upstream
from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import event, request
from tests.fake_intake import FakeIntake
from tests.helpers import API_KEY, JSON, relay_command, wait_until, wire_body

CERTIFICATE_ERROR = "CERTIFICATE_VERIFY_FAILED"


class ConnectProxy:
    """A forward proxy on 127.0.0.1 that tunnels CONNECT to loopback ports only, and
    records each tunnel's target."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host != "127.0.0.1":  # loopback only, tunnels only
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self._writers.add(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


@pytest.fixture
def ca() -> trustme.CA:
    """A CA of the test's own, as an intercepting proxy or a private intake would have."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA's certificate as a PEM file, for upstream.ca_file."""
    path = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_intake(ca: trustme.CA) -> AsyncIterator[FakeIntake]:
    """A fake intake served over TLS on 127.0.0.1 with a certificate from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with FakeIntake(ssl_context=context) as intake:
        yield intake


@contextlib.contextmanager
def proxy_env(monkeypatch: pytest.MonkeyPatch, proxy: str, no_proxy: str) -> Iterator[None]:
    """HTTPS_PROXY and NO_PROXY as an operator sets them (and no other proxy variable)."""
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    yield


async def _send(url: str, ca_file: Path | None) -> Outcome:
    upstream = Upstream(UpstreamSettings(url=url, api_key=SecretStr(API_KEY), ca_file=ca_file))
    try:
        return await upstream.send_body(wire_body([event("pipeline")]))
    finally:
        await upstream.close()


async def test_https_proxy_carries_the_requests(
    tls_intake: FakeIntake, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set, batches go through the proxy's CONNECT tunnel to the intake."""
    async with ConnectProxy() as proxy:
        with proxy_env(monkeypatch, proxy.url, no_proxy="example.invalid"):
            outcome = await _send(tls_intake.url, ca_file)
    port = tls_intake.url.rsplit(":", 1)[1]
    assert (Delivered(), [f"127.0.0.1:{port}"]) == (outcome, proxy.tunnels)
    assert 1 == len(tls_intake.accepted_events)


async def test_no_proxy_bypasses_the_proxy(
    tls_intake: FakeIntake, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host listed in NO_PROXY is reached directly, the proxy untouched."""
    async with ConnectProxy() as proxy:
        with proxy_env(monkeypatch, proxy.url, no_proxy="localhost,127.0.0.1"):
            outcome = await _send(tls_intake.url, ca_file)
    assert (Delivered(), []) == (outcome, proxy.tunnels)
    assert 1 == len(tls_intake.accepted_events)


async def test_without_ca_file_a_private_ca_is_a_certificate_error(
    tls_intake: FakeIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An intake whose CA the system does not trust is a retry naming the certificate error."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    outcome = await _send(tls_intake.url, None)
    assert isinstance(outcome, Retry), outcome
    assert CERTIFICATE_ERROR in outcome.reason
    assert [] == tls_intake.received


async def test_ca_file_lets_the_daemon_deliver_what_it_kept(
    tls_intake: FakeIntake, ca_file: Path, tmp_path: Path
) -> None:
    """A relay without ca_file keeps the event and logs the certificate error; restarted
    with upstream.ca_file it delivers it."""

    def config(**upstream: str) -> Path:
        return write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(tmp_path / "outbox.db")},
            upstream={"url": tls_intake.url, "api_key": API_KEY} | upstream,
            flusher={"flush_interval_s": 0.05},
            retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2},
        )

    env = {"NO_PROXY": "127.0.0.1", "HTTPS_PROXY": "", "HTTP_PROXY": ""}
    body = orjson.dumps(request(event("pipeline")))
    async with aiohttp.ClientSession() as client:
        async with RelayProcess(config(), env) as relay:
            async with client.post(relay.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
            await wait_until(lambda: bool(relay.events("upstream retry")), 15, "a retry")
            await relay.terminate()
        retried = relay.events("upstream retry")[0]["last_answer"]
        async with RelayProcess(config(ca_file=str(ca_file)), env) as relay:
            await tls_intake.wait_for_events(1, timeout_s=15)
            await relay.terminate()
    assert CERTIFICATE_ERROR in retried
    # The first relay's requests never got past the TLS handshake; the second's one did.
    assert [202] == [r.answered for r in tls_intake.received]


# --- the proxy that applies to the upstream is checked at start --------------------------

PROXY_SECRET = "proxy-secret-value"  # noqa: S105 - a stand-in the test looks for in messages


def _proxy_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable of the test machine applies."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_PROXY", "http://127.0.0.1:99999"),
        ("http_proxy", "http://127.0.0.1:-1"),
        ("HTTP_PROXY", "http://127.0.0.1:abc"),
        ("HTTP_PROXY", f"http://relay:{PROXY_SECRET}@127.0.0.1:65536"),
        ("HTTP_PROXY", f"http://relay:{PROXY_SECRET}/x@127.0.0.1:3128"),
        ("HTTP_PROXY", f"http://re%3Alay:{PROXY_SECRET}@127.0.0.1:3128"),
        ("HTTP_PROXY", "https://127.0.0.1:3128"),
        ("HTTP_PROXY", "socks5://127.0.0.1:1080"),
        ("HTTP_PROXY", "127.0.0.1:3128"),
    ],
    ids=[
        "port-99999",
        "port-negative",
        "port-text",
        "port-with-secret",
        "slash-in-secret",
        "colon-in-login",
        "https-proxy",
        "socks",
        "no-scheme",
    ],
)
def test_an_unusable_proxy_for_the_upstream_is_refused_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy variable that applies to the upstream is checked when the client is made:
    ConfigError naming the variable, in one line, never quoting its login or secret."""
    _proxy_free(monkeypatch)
    monkeypatch.setenv(variable, value)
    settings = UpstreamSettings(url="http://127.0.0.1:9", api_key=SecretStr(API_KEY))
    with pytest.raises(ConfigError) as raised:
        Upstream(settings)
    message = str(raised.value)
    assert (True, 1) == (variable in message, len(message.splitlines())), message
    assert [] == [part for part in ("relay", "re%3A", "lay", PROXY_SECRET) if part in message]


async def test_a_bad_proxy_variable_that_does_not_apply_is_left_alone(
    tls_intake: FakeIntake, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https upstream ignores a broken HTTP_PROXY (only HTTPS_PROXY applies to it) and
    delivers; a host in NO_PROXY ignores a broken HTTPS_PROXY."""
    _proxy_free(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:99999")
    direct = await _send(tls_intake.url, ca_file)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:99999")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    listed = await _send(tls_intake.url, ca_file)
    assert (Delivered(), Delivered()) == (direct, listed)


@pytest.mark.parametrize("command", ["check-config", "serve"])
async def test_a_bad_proxy_port_stops_the_relay_at_start_with_one_line(
    command: str, tmp_path: Path
) -> None:
    """check-config and serve with HTTP_PROXY on port 99999 for an http upstream: one line
    naming HTTP_PROXY, exit 2, the proxy's secret unquoted; serve opens nothing first."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": "http://127.0.0.1:9", "api_key": API_KEY},
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env = relay_free_env(env)
    env["HTTP_PROXY"] = f"http://relay:{PROXY_SECRET}@127.0.0.1:99999"
    ran = await relay_command(command, "--config", str(config), env=env, timeout_s=20)
    lines = ran.stderr.decode().splitlines()
    assert (2, 1) == (ran.returncode, len(lines)), ran.stderr
    assert "HTTP_PROXY" in lines[0]
    assert PROXY_SECRET not in ran.stdout.decode() + lines[0]
    assert not (tmp_path / "outbox.db").exists()
    if command == "serve":
        assert b"" == ran.stdout


async def test_check_config_names_the_proxy_the_upstream_goes_through(tmp_path: Path) -> None:
    """check-config says which proxy variable applies to the upstream, its secret hidden."""
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(tmp_path / "o.db")})
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env = relay_free_env(env)
    env["HTTPS_PROXY"] = f"http://relay:{PROXY_SECRET}@proxy.example:3128"
    ran = await relay_command("check-config", "--config", str(config), env=env, timeout_s=30)
    stdout, stderr = ran.stdout.decode(), ran.stderr.decode()
    assert (0, "") == (ran.returncode, stderr), stderr
    assert "# through the proxy http://***@proxy.example:3128 (HTTPS_PROXY)" in stdout
    assert PROXY_SECRET not in stdout
