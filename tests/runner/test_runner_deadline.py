"""--timeout-s bounds the whole exchange with the relay (connect, send, read), not each read."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from relay.testing.samples import ago
from tests.helpers import relay_command as ci_relay
from tests.runner.test_emit import github

TRICKLE_INTERVAL_S = 0.25
TRICKLE_BYTES = 240  # a minute of trickling: far past any deadline under test
BOUND_S = 8.0  # --timeout-s 1, plus the interpreter's start and the git reads


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1, and the file of the CA that signed it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.fixture(params=["http", "https"])
async def trickling_relay(
    request: pytest.FixtureRequest, certificate: tuple[ssl.SSLContext, Path]
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A server on 127.0.0.1 (plain or TLS) that answers a status line, then one header byte
    every TRICKLE_INTERVAL_S for a minute; its base URL, and the variables that trust it."""
    handlers: list[asyncio.Task[None]] = []
    tls = request.param == "https"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
            for _ in range(TRICKLE_BYTES):
                await writer.drain()
                await asyncio.sleep(TRICKLE_INTERVAL_S)
                writer.write(b"x")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client gave up, as it should
        finally:
            writer.close()

    server = await asyncio.start_server(
        trickle, "127.0.0.1", 0, ssl=certificate[0] if tls else None
    )
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{request.param}://{host}:{port}", {"SSL_CERT_FILE": str(certificate[1])}
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_run_ends_at_the_deadline_of_a_trickling_relay(
    trickling_relay: tuple[str, dict[str, str]], checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A relay that trickles its answer keeps `run --timeout-s 1` no longer than the deadline:
    the command's status, and one warning."""
    cwd, sha = checkout
    url, trust = trickling_relay
    env = github(tmp_path, sha, CI_RELAY_URL=url) | trust
    began = time.monotonic()
    done = await ci_relay(
        "run", "--timeout-s", "1", "--", "sh", "-c", "exit 3", env=env, cwd=cwd, timeout_s=30
    )
    elapsed = time.monotonic() - began
    assert (3, b"") == (done.returncode, done.stdout)
    assert [
        f"ci-relay: run: the job was not reported: the relay at {url}"
        "/api/v2/ci/pipeline did not answer within 1 s"
    ] == done.stderr.decode().splitlines()
    assert elapsed < BOUND_S


async def test_emit_ends_at_the_deadline_of_a_trickling_relay(
    trickling_relay: tuple[str, dict[str, str]], checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """emit to a relay that trickles its answer gives up at --timeout-s, with status 1."""
    cwd, sha = checkout
    url, trust = trickling_relay
    env = github(tmp_path, sha, CI_RELAY_URL=url) | trust
    began = time.monotonic()
    done = await ci_relay(
        "emit", "job", "--status", "success", "--start", ago(seconds=5), "--timeout-s", "1",
        env=env, cwd=cwd, timeout_s=30,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert (1, b"") == (done.returncode, done.stdout)
    assert [
        f"ci-relay: emit: the relay at {url}/api/v2/ci/pipeline did not answer within 1 s"
    ] == done.stderr.decode().splitlines()
    assert elapsed < BOUND_S


async def test_emit_posts_over_https_to_a_relay_it_trusts(
    certificate: tuple[ssl.SSLContext, Path], checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """emit posts to an https relay whose certificate the system's trust store (here
    SSL_CERT_FILE) holds, and gets its 202."""
    received: list[bytes] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/api/v2/ci/pipeline", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate[0]).start()
    host, port = runner.addresses[0][:2]
    try:
        cwd, sha = checkout
        env = github(tmp_path, sha, CI_RELAY_URL=f"https://{host}:{port}")
        done = await ci_relay(
            "emit", "job", "--status", "success", "--start", ago(seconds=5),
            env=env | {"SSL_CERT_FILE": str(certificate[1])}, cwd=cwd,
        )  # fmt: skip
    finally:
        await runner.cleanup()
    assert (0, b"", 1) == (done.returncode, done.stderr, len(received))
