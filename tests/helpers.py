"""Shared test helpers: constants, sample batches, predicates, clocks, waits, a served relay,
the relay's commands run to their end."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from relay.app import app_runner, create_app
from relay.config import OutboxSettings
from relay.contract.intake import PIPELINE_PATH
from relay.contract.schema import parse_request
from relay.ingest.admission import ParseBudget
from relay.ingest.connections import ConnectionGuard
from relay.keyfiles import KeyFile
from relay.store.outbox import Outbox
from relay.testing.process import relay_free_env
from relay.testing.samples import event, request

JSON = {"Content-Type": "application/json"}
"""The header every well-formed request to the relay carries."""
API_KEY = "0123456789abcdef0123456789abcdef"
HOUR = 3600.0
EMPTY_BODY_BYTES = len(b'{"data":[]}')


def jobs(n: int, prefix: str = "job") -> list[dict[str, Any]]:
    """``n`` finished job events, each with its own id and name (equal lengths, so equal sizes)."""
    return [event("job", id=f"{prefix}-{i:05d}", name=f"{prefix}-{i:05d}") for i in range(n)]


def big_job(name: str, size: int) -> dict[str, Any]:
    """A job event whose stored JSON is longer than ``size`` bytes."""
    return event("job", id=name, name=name, parameters={"blob": "x" * size})


def event_id(sent: dict[str, Any]) -> str:
    """The resource id a test gave an event."""
    return str(sent["attributes"]["resource"]["id"])


def named(*names: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate matching events whose resource name is one of ``names``."""
    wanted = set(names)
    return lambda e: e["attributes"]["resource"]["name"] in wanted


def stored(events: Sequence[dict[str, Any]]) -> list[bytes]:
    """The events' JSON as the outbox stores it."""
    return [accepted.body for accepted in parse_request(orjson.dumps(request(*events)))]


def wire_body(events: Sequence[dict[str, Any]]) -> bytes:
    """The request body the relay must send for ``events``, written out independently."""
    return b'{"data":[' + b",".join(stored(events)) + b"]}"


def body_len(events: Sequence[dict[str, Any]]) -> int:
    """The length of the request body the relay sends for ``events``."""
    return len(wire_body(events))


def ahead(seconds: float) -> Callable[[], float]:
    """A clock ``seconds`` ahead of the real one."""
    return lambda: time.time() + seconds


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 10 ms (for facts no event announces); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class RunningRelay:
    """An in-process relay: its URL, its outbox, and a client session to talk to it."""

    base_url: str
    outbox: Outbox
    client: aiohttp.ClientSession

    @property
    def url(self) -> str:
        """The relay's pipeline URL."""
        return self.base_url + PIPELINE_PATH


@asynccontextmanager
async def serving(
    settings: OutboxSettings,
    max_body_bytes: int = 5 * 1024 * 1024,
    guard: ConnectionGuard | None = None,
    parse_budget: ParseBudget | None = None,
    ingest_token: KeyFile | None = None,
    webhook_secrets: dict[str, KeyFile] | None = None,
) -> AsyncIterator[RunningRelay]:
    """The relay's HTTP API on 127.0.0.1 over a real outbox, closed on exit."""
    outbox = await Outbox.open(settings)
    app = create_app(
        outbox,
        max_body_bytes,
        retry_after_s=7,
        outbox_settings=settings,
        parse_budget=parse_budget,
        ingest_token=ingest_token,
        webhook_secrets=webhook_secrets,
    )
    web_runner = app_runner(app, guard)
    try:
        await web_runner.setup()
        await web.TCPSite(web_runner, "127.0.0.1", 0).start()
        host, port = web_runner.addresses[0][:2]
        async with aiohttp.ClientSession() as client:
            yield RunningRelay(f"http://{host}:{port}", outbox, client)
    finally:
        await web_runner.cleanup()
        await outbox.close()


_THREAD_START_TIMEOUT_S = 20.0


@contextmanager
def serving_in_thread(
    settings: OutboxSettings, ingest_token: KeyFile | None = None
) -> Iterator[str]:
    """``serving`` on an event loop of its own in a background thread, for blocking clients
    (hypothesis's ``@given`` and schemathesis call their test function synchronously): the
    base URL (``http://127.0.0.1:PORT``) of a relay served until the block ends."""
    started = threading.Event()
    base_url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with serving(settings, ingest_token=ingest_token) as running:
            base_url.append(running.base_url)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # reported to the test below, not lost in the thread
            failure.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    started.wait(_THREAD_START_TIMEOUT_S)
    if failure or not base_url:
        thread.join(_THREAD_START_TIMEOUT_S)
        raise RuntimeError(f"the relay did not start: {failure}")
    try:
        yield base_url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(_THREAD_START_TIMEOUT_S)
    if failure:
        raise failure[0]


class Clock:
    """A clock the test moves by hand, starting now."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


MOUNT, UMOUNT = shutil.which("mount") or "/bin/mount", shutil.which("umount") or "/bin/umount"


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs of the test's own mounted at ``where`` with ``options``, unmounted afterwards
    (the suite runs as root, which ignores permission bits: a real read-only or full file
    system is how a test gets one)."""
    where.mkdir()
    subprocess.run([MOUNT, "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run([UMOUNT, "-l", str(where)], check=True)


@dataclass
class Ran:
    """One ``ci-relay`` command run: its exit status and output as text."""

    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)


CLI_TIMEOUT_S = 60.0


async def relay_command(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m relay ARGS`` run to its end in ``env``, its output captured as bytes;
    killed if it outlasts ``timeout_s``, then a TimeoutError quoting what it wrote on stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Shielded: on a timeout the reads go on until the killed child's pipes close, so the
    # error can show where a command that hangs got to.
    talking = asyncio.ensure_future(process.communicate(stdin or b""))
    try:
        out, err = await asyncio.wait_for(asyncio.shield(talking), timeout_s)
    except TimeoutError:
        process.kill()
        _, err = await talking
        raise TimeoutError(f"{args} did not end within {timeout_s} s; stderr: {err!r}") from None
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out, err)


async def ci_relay(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = CLI_TIMEOUT_S
) -> Ran:
    """``ci-relay ARGS`` as a user runs it, with none of the test machine's DD_ or
    CI_RELAY_ variables but those of ``env``."""
    done = await relay_command(*args, env=relay_free_env() | dict(env or {}), timeout_s=timeout_s)
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())
