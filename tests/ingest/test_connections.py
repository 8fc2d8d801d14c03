"""Connections: slow clients cannot lock runners out; protocol errors answer in Datadog's shape."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from structlog.testing import capture_logs

from relay.config import OutboxSettings, ServerSettings
from relay.contract.intake import PIPELINE_PATH
from relay.daemon import listener_tls
from relay.ingest.connections import ConnectionGuard
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.helpers import JSON, RunningRelay, serving, wait_until

SLOW_HEAD = f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
RUNNER_ATTEMPTS = 20
CONNECT_TIMEOUT_S = 3.0


def _closed(reader: asyncio.StreamReader) -> bool:
    # A close with unread bytes on the relay's side arrives as a reset, not an end of file.
    return reader.at_eof() or reader.exception() is not None


class SlowClients:
    """Connections that send the start of a request head, or nothing, and never finish it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.failed_to_connect = 0

    async def open(self, count: int, head: bytes = SLOW_HEAD) -> None:
        """Open ``count`` connections, each sending ``head`` (nothing, when empty)."""
        results = await asyncio.gather(
            *(self._connect(head) for _ in range(count)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                self.failed_to_connect += 1
            else:
                self.streams.append(result)

    async def _connect(self, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), CONNECT_TIMEOUT_S
        )
        writer.write(head)
        return reader, writer

    def trickle(self) -> None:
        """One more byte of header on every connection the relay has not closed."""
        for reader, writer in self.streams:
            if not _closed(reader) and not writer.is_closing():
                writer.write(b"a")

    def closed_by_relay(self) -> int:
        return sum(1 for reader, _ in self.streams if _closed(reader))

    async def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
        for _, writer in self.streams:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def slow_clients(port: int, count: int) -> AsyncIterator[SlowClients]:
    """``count`` slow connections trickling a byte every 0.5 s until the block ends."""
    clients = SlowClients(port)
    stop = asyncio.Event()

    async def trickle() -> None:
        for _ in range(240):  # bounded: at most two minutes
            clients.trickle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
                return

    task = asyncio.create_task(trickle())
    try:
        await clients.open(count)
        yield clients
    finally:
        stop.set()
        await task
        await clients.close()


async def runner_successes(url: str, attempts: int, tls: ssl.SSLContext | None = None) -> int:
    """How many of ``attempts`` runner posts, each on a new connection, got 202 (over https,
    trusting ``tls``, when given)."""
    body = orjson.dumps(request(event("pipeline")))
    successes = 0
    timeout = aiohttp.ClientTimeout(total=3)
    if tls is not None:
        url = url.replace("http://", "https://")
    for _ in range(attempts):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            try:
                async with client.post(url, data=body, headers=JSON, ssl=tls or True) as resp:
                    successes += resp.status == 202
            except (aiohttp.ClientError, TimeoutError):
                pass
    return successes


def open_file_limit(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


async def start_daemon(
    tmp_path: Path, server: dict[str, object], preexec_fn: Callable[[], None] | None = None
) -> RelayProcess:
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0, **server},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": "http://127.0.0.1:9"},
    )
    return await RelayProcess(config, preexec_fn=preexec_fn).start()


async def wait_for_log(relay: RelayProcess, name: str) -> None:
    """Return once the relay has logged ``name`` (no event announces a line); fail after 10 s."""
    await wait_until(lambda: bool(relay.events(name)), 10.0, f"a {name!r} log line")


async def test_runners_are_served_while_300_slow_clients_are_connected(tmp_path: Path) -> None:
    """With a soft open-file limit of 256 the relay raises it, and serves runners beside 300
    slow connections."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1024:
        pytest.skip("needs a hard open-file limit of at least 1024")
    relay = await start_daemon(tmp_path, {}, open_file_limit(256, hard))
    try:
        async with slow_clients(relay.port, 300) as clients:
            assert RUNNER_ATTEMPTS == await runner_successes(relay.url, RUNNER_ATTEMPTS)
            assert 0 == clients.closed_by_relay()
        [limit] = relay.events("open-file limit")
        assert (hard, 256) == (limit["limit"], limit["raised_from"])
    finally:
        await relay.kill()


async def test_runners_are_served_when_the_hard_open_file_limit_is_256(tmp_path: Path) -> None:
    """With a hard limit of 256, the slow connections that sent least are dropped for runners."""
    relay = await start_daemon(tmp_path, {}, open_file_limit(256, 256))
    try:
        async with slow_clients(relay.port, 300) as clients:
            assert RUNNER_ATTEMPTS == await runner_successes(relay.url, RUNNER_ATTEMPTS)
            closed = clients.closed_by_relay()
        [limit] = relay.events("open-file limit")
        assert (256, 256) == (limit["limit"], limit["hard_limit"])
        bound = limit["max_connections"]
        assert bound < 256
        # Past the bound every arrival, slow or runner, closed an open slow connection.
        assert closed >= 300 - bound + 1
        # Drops are reported every 10 s and at shutdown: stop the relay, then add them up.
        assert 0 == await relay.terminate()
        dropped = relay.events("connections dropped")
        assert sum(line["at_bound"] for line in dropped) >= closed
    finally:
        await relay.kill()


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the relay sent before it closed the connection; a reset counts as a close."""
    received = b""
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def test_a_request_head_trickled_past_the_read_timeout_is_dropped(tmp_path: Path) -> None:
    """A head still incomplete read_timeout_s after the connection opened is closed, and logged."""
    relay = await start_daemon(tmp_path, {"read_timeout_s": 1.0})
    try:
        async with slow_clients(relay.port, 1) as clients:
            started = asyncio.get_running_loop().time()
            [(reader, _)] = clients.streams
            assert b"" == await read_until_closed(reader, 10)
            assert asyncio.get_running_loop().time() - started >= 0.9
        await wait_for_log(relay, "connections dropped")
        [dropped] = relay.events("connections dropped")
        assert (1, 0) == (dropped["read_timeout"], dropped["at_bound"])
    finally:
        await relay.kill()


async def test_a_body_trickled_past_the_read_timeout_is_dropped(tmp_path: Path) -> None:
    """A body still incomplete read_timeout_s after its head arrived is closed, and logged."""
    relay = await start_daemon(tmp_path, {"read_timeout_s": 1.0})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        head = f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        writer.write(head.encode() + b"Content-Length: 1000\r\n\r\n{")
        stop = asyncio.Event()

        async def trickle() -> None:
            for _ in range(40):  # bounded: at most ten seconds
                writer.write(b" ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
                    return

        task = asyncio.create_task(trickle())
        try:
            assert b"" == await read_until_closed(reader, 10)
        finally:
            stop.set()
            await task
            writer.close()
        await wait_for_log(relay, "connections dropped")
        assert 1 == relay.events("connections dropped")[0]["read_timeout"]
    finally:
        await relay.kill()


async def test_an_idle_keep_alive_connection_outlives_the_read_timeout(tmp_path: Path) -> None:
    """The read timeout applies to requests being received, not to keep-alive between them."""
    relay = await start_daemon(tmp_path, {"read_timeout_s": 0.5})
    try:
        body = orjson.dumps(request(event("pipeline")))
        connections: list[object] = []

        async def on_connection(*args: object) -> None:
            connections.append(args)

        tracing = aiohttp.TraceConfig()
        tracing.on_connection_create_end.append(on_connection)
        async with aiohttp.ClientSession(trace_configs=[tracing]) as client:
            async with client.post(relay.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
            await asyncio.sleep(1.5)  # three read timeouts with nothing to await
            async with client.post(relay.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
        assert 1 == len(connections)
        assert [] == relay.events("connections dropped")
    finally:
        await relay.kill()


@dataclass(frozen=True)
class ListenerCertificate:
    """The listener's certificate settings, and a client context that trusts the certificate."""

    settings: dict[str, str]
    trusted: ssl.SSLContext


@pytest.fixture
def listener_certificate(tmp_path: Path) -> ListenerCertificate:
    """A certificate for 127.0.0.1 from a CA of the test's own, in server.tls_* files."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    files = {"tls_cert_file": str(tmp_path / "tls.crt"), "tls_key_file": str(tmp_path / "tls.key")}
    return ListenerCertificate(files, trusted)


async def test_a_connection_that_never_starts_tls_is_dropped_after_the_read_timeout(
    tmp_path: Path, listener_certificate: ListenerCertificate
) -> None:
    """On the TLS listener, a connection that sends no ClientHello is closed read_timeout_s
    after it opened, and logged."""
    relay = await start_daemon(tmp_path, {"read_timeout_s": 1.0, **listener_certificate.settings})
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        try:
            assert b"" == await read_until_closed(reader, 10)
        finally:
            writer.close()
        elapsed = loop.time() - started
        await wait_for_log(relay, "connections dropped")
        [dropped] = relay.events("connections dropped")
        assert (1, 0) == (dropped["read_timeout"], dropped["at_bound"])
        assert elapsed >= 0.9
    finally:
        await relay.kill()


TLS_READ_TIMEOUT_S = 3.0


async def test_https_runners_are_served_while_silent_connections_pass_the_bound(
    tmp_path: Path, listener_certificate: ListenerCertificate
) -> None:
    """With a hard open-file limit of 256, 300 connections that never start TLS neither lock
    https runners out nor stay past the read timeout, and their drops are logged."""
    server = {"read_timeout_s": TLS_READ_TIMEOUT_S, **listener_certificate.settings}
    relay = await start_daemon(tmp_path, server, open_file_limit(256, 256))
    silent = SlowClients(relay.port)
    try:
        await silent.open(300, head=b"")
        attempts = 5
        served = await runner_successes(relay.url, attempts, listener_certificate.trusted)
        assert (attempts, 0) == (served, silent.failed_to_connect)
        # Past the read timeout every one of them is closed, by the bound or by the timeout.
        async with asyncio.timeout(TLS_READ_TIMEOUT_S + 5):
            for reader, _ in silent.streams:
                await read_until_closed(reader, TLS_READ_TIMEOUT_S + 5)
        [limit] = relay.events("open-file limit")
        assert 0 == await relay.terminate()
        dropped = relay.events("connections dropped")
        at_bound = sum(line["at_bound"] for line in dropped)
        read_timeout = sum(line["read_timeout"] for line in dropped)
        assert at_bound >= 300 - limit["max_connections"]
        assert read_timeout >= 1
        assert at_bound + read_timeout >= 300
    finally:
        await silent.close()
        await relay.kill()


@pytest.fixture
async def bounded_relay(
    outbox_settings: OutboxSettings,
) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    """An in-process relay that keeps at most 3 connections and admits without a grace time."""
    guard = ConnectionGuard(read_timeout_s=30.0, max_connections=3, admission_grace_s=0.0)
    async with serving(outbox_settings, guard=guard) as relay:
        yield int(relay.base_url.rsplit(":", 1)[1]), guard


async def test_at_the_bound_the_connection_that_sent_least_is_dropped(
    bounded_relay: tuple[int, ConnectionGuard],
) -> None:
    """A connection arriving at the bound closes the open connection that sent the fewest bytes."""
    port, guard = bounded_relay
    sent = {"most": 40, "least": 2, "middle": 20}
    streams = {}
    for name, size in sent.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SLOW_HEAD[:size])
        await writer.drain()
        streams[name] = (reader, writer)
    # No event says "the relay has read these bytes": poll its connections, bounded.
    deadline = time.monotonic() + 5
    while sorted(sent.values()) != sorted(c.bytes_received for c in guard.connections):
        assert time.monotonic() < deadline, "the relay did not read the bytes sent"
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await read_until_closed(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"" == await read_until_closed(streams["least"][0], 5)
    assert (False, False) == (streams["most"][0].at_eof(), streams["middle"][0].at_eof())
    for _, writer in streams.values():
        writer.close()


@pytest.fixture
async def tls_bounded_relay(
    outbox_settings: OutboxSettings, listener_certificate: ListenerCertificate
) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    """An in-process relay over TLS that keeps at most 3 connections and admits without a
    grace time."""
    tls = listener_tls(ServerSettings.model_validate(listener_certificate.settings))
    guard = ConnectionGuard(30.0, max_connections=3, admission_grace_s=0.0, tls=tls)
    async with serving(outbox_settings, guard=guard) as relay:
        yield int(relay.base_url.rsplit(":", 1)[1]), guard


async def test_at_the_bound_a_connection_still_in_its_tls_handshake_is_dropped_first(
    tls_bounded_relay: tuple[int, ConnectionGuard], listener_certificate: ListenerCertificate
) -> None:
    """At the bound, a connection that has not started TLS gives way to an https runner,
    while connections that sent part of a request stay open."""
    port, guard = tls_bounded_relay
    trusted = listener_certificate.trusted
    sending = [await asyncio.open_connection("127.0.0.1", port, ssl=trusted) for _ in range(2)]
    for _, writer in sending:
        writer.write(SLOW_HEAD)
        await writer.drain()
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
    # No event says "the relay has read these bytes": poll its connections, bounded.
    deadline = time.monotonic() + 5
    while sorted(c.bytes_received for c in guard.connections) != [0, *[len(SLOW_HEAD)] * 2]:
        assert time.monotonic() < deadline, "the relay did not read the bytes sent"
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await read_until_closed(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"" == await read_until_closed(silent_reader, 5)
    assert [False, False] == [r.at_eof() for r, _ in sending]
    for _, open_writer in [*sending, (silent_reader, silent_writer)]:
        open_writer.close()


async def test_plain_http_on_the_tls_listener_is_closed_and_forgotten(
    tls_bounded_relay: tuple[int, ConnectionGuard],
) -> None:
    """A request in plain HTTP on the TLS listener fails its handshake: the connection is
    closed at once and no longer counts against the bound."""
    port, guard = tls_bounded_relay
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert b"" == await read_until_closed(reader, 5)
    finally:
        writer.close()
    await wait_until(lambda: not guard.connections, 5, "the connection forgotten")


async def test_stopping_closes_connections_still_in_their_tls_handshake(
    outbox_settings: OutboxSettings, listener_certificate: ListenerCertificate
) -> None:
    """When the relay stops, a connection that never started TLS is closed with it."""
    tls = listener_tls(ServerSettings.model_validate(listener_certificate.settings))
    guard = ConnectionGuard(30.0, tls=tls)
    async with serving(outbox_settings, guard=guard) as relay:
        port = int(relay.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until(lambda: bool(guard.connections), 5, "the connection admitted")
    try:
        assert b"" == await read_until_closed(reader, 5)
    finally:
        writer.close()


PROTOCOL_ERRORS = {
    "bad header character": b"POST / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n",
    "header over 8190 bytes": b"POST / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    "request line over 8190 bytes": b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad chunk": (
        f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ).encode(),
    "bad method": b"P@ST / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "TLS on the HTTP port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("raw", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_protocol_errors_answer_in_datadog_shape(relay: RunningRelay, raw: bytes) -> None:
    """A request aiohttp's parser refuses gets 400 with a JSON body in Datadog's error shape."""
    port = int(relay.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    answer = await read_until_closed(reader, 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 Bad Request") or head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    [error] = orjson.loads(body)["errors"]
    assert ("400", "Bad Request") == (error["status"], error["title"])
    assert "\n" not in error["detail"]
    assert error["detail"].startswith("the request is not valid HTTP: ")


async def test_an_overlong_header_is_described_by_the_limit(relay: RunningRelay) -> None:
    """A header over the line limit is refused by naming the limit, not by echoing the line."""
    port = int(relay.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PROTOCOL_ERRORS["header over 8190 bytes"])
    answer = await read_until_closed(reader, 5)
    writer.close()
    [error] = orjson.loads(answer.partition(b"\r\n\r\n")[2])["errors"]
    expected = "the request is not valid HTTP: a request line or header is longer than 8190 bytes"
    assert expected == error["detail"]


async def test_a_bad_chunk_after_the_head_is_answered_at_once(relay: RunningRelay) -> None:
    """A malformed chunk arriving after the head fails the request at once, in Datadog's shape."""
    port = int(relay.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
    await writer.drain()
    # The request must be in its handler before the bad chunk arrives; an answer to
    # GET /health on another connection cannot say so, so give the loop a turn.
    await asyncio.sleep(0.2)
    writer.write(b"zz\r\n\r\n")
    # Well inside the 30 s read timeout: the answer comes from the parse error.
    answer = await read_until_closed(reader, 5)
    writer.close()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    [error] = orjson.loads(body)["errors"]
    assert (400, "400") == (status, error["status"])
    assert error["detail"].startswith("the request body is not valid HTTP:"), error
    assert 0 == relay.outbox.counts.events


async def test_a_client_gone_mid_body_is_not_an_error(relay: RunningRelay) -> None:
    """A runner that hangs up halfway through its body leaves an info line, no error."""
    port = int(relay.base_url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with capture_logs() as logs:
        writer.write(head.encode() + b'Content-Length: 1000\r\n\r\n{"data": [')
        await writer.drain()
        async with relay.client.get(relay.base_url + "/health") as health:
            assert 200 == health.status  # the request above is in its handler by now
        writer.close()
        await writer.wait_closed()
        for _ in range(100):  # at most 2 s for the handler to see the hang-up
            if any(e["event"] == "client went away" for e in logs):
                break
            await asyncio.sleep(0.02)
    assert [] == [e for e in logs if e["log_level"] == "error"], logs
    [gone] = [e for e in logs if e["event"] == "client went away"]
    assert PIPELINE_PATH == gone["path"]
    assert 0 == relay.outbox.counts.events
