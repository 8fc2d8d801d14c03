"""Secret files (the API key, the ingest token): only a regular file of at most a few KiB
holding a secret is ever taken, and reading one never stalls the relay."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from relay.config import ConfigError
from relay.keyfiles import MAX_SECRET_BYTES, KeyFile
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import FakeIntake, RequireKey
from tests.helpers import JSON, ci_relay, wait_until

TOKEN = "ingest-token-4f1d2c9a7b"  # noqa: S105
KEY = "good0123456789abcdef0123456789ab"
TOKEN_SETTING = "server.ingest_token_file"  # noqa: S105 (a setting's name)
KEY_SETTING = "upstream.api_key_file"
LINE_WAIT_S = 10.0  # a change is read within the 2 s poll; 10 s leaves room on a busy host


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _blank(path: Path) -> None:
    path.write_text("\n  \n")


def _oversized(path: Path) -> None:
    path.write_text("k" * (MAX_SECRET_BYTES + 1))


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _device(path: Path) -> None:
    path.symlink_to("/dev/null")


def _control_character(path: Path) -> None:
    path.write_text("abc\x07def")


def _not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe")


# What each unusable file is, how to make one, and the words of the refusal.
UNUSABLE: list[tuple[str, Callable[[Path], None], str]] = [
    ("empty", _empty, "is empty"),
    ("white space only", _blank, "is empty"),
    ("larger than the bound", _oversized, f"larger than {MAX_SECRET_BYTES} bytes"),
    ("a FIFO", _fifo, "not a regular file (a FIFO)"),
    ("a directory", _directory, "not a regular file (a directory)"),
    ("a device", _device, "not a regular file (a character device)"),
    ("a control character", _control_character, "control or non-ASCII"),
    ("not UTF-8", _not_utf8, "not UTF-8"),
]


@pytest.mark.timeout(10)  # a FIFO once blocked open() for good
@pytest.mark.parametrize(("kind", "make", "cause"), UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_an_unusable_secret_file_is_refused_at_start(
    tmp_path: Path, kind: str, make: Callable[[Path], None], cause: str
) -> None:
    """A secret file that is empty, too large, not a regular file or not printable ASCII is
    refused with one message naming the setting, the file and the cause."""
    path = tmp_path / "secret"
    make(path)
    with pytest.raises(ConfigError) as refused:
        KeyFile(TOKEN_SETTING, None, path)
    assert f"invalid config: {TOKEN_SETTING}: {path}: " in str(refused.value)
    assert cause in str(refused.value)


@pytest.mark.parametrize(("kind", "make", "cause"), UNUSABLE, ids=[u[0] for u in UNUSABLE])
async def test_an_unusable_secret_file_later_keeps_the_last_good_value(
    tmp_path: Path, kind: str, make: Callable[[Path], None], cause: str
) -> None:
    """A secret file that becomes unusable while the relay runs is not taken: the last good
    value stays in force, with one warning naming the setting and the cause."""
    path = tmp_path / "secret"
    path.write_text(KEY + "\n")
    secret = await KeyFile.load(KEY_SETTING, None, path)
    path.unlink()
    make(path)
    with capture_logs() as logs:
        changed = await secret.refresh(only_changed=True)
        again = await secret.refresh(only_changed=True)  # unchanged since: no second warning
    assert (False, False, KEY) == (changed, again, secret.value)
    assert [("warning", KEY_SETTING)] == [(line["log_level"], line["setting"]) for line in logs]
    assert cause in logs[0]["error"]


# A read stuck in the kernel (a hung network file system), played by a wait that never ends.
STUCK_READ = """
import asyncio, threading
from relay.keyfiles import in_thread

async def main():
    stuck = asyncio.wrap_future(in_thread(threading.Event().wait))
    ticks = 0
    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)
    ticker = asyncio.create_task(tick())
    try:
        await asyncio.wait_for(stuck, 0.5)
    except TimeoutError:
        print("timed out; the loop ticked", ticks >= 10)
    ticker.cancel()

asyncio.run(main())
"""


async def test_a_read_that_never_returns_neither_stalls_the_loop_nor_the_exit() -> None:
    """A call in a key file's read thread that never returns times out while the event loop
    keeps running, and the process still exits at once when its work is done."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STUCK_READ,
        cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (0, "timed out; the loop ticked True") == (process.returncode, out.decode().strip()), err


# --- the daemon -------------------------------------------------------------------------


def _lines_about(relay: RelayProcess, setting: str) -> list[dict[str, Any]]:
    return [line for line in relay.logs if line.get("setting") == setting]


async def _line_about(relay: RelayProcess, setting: str, n: int) -> dict[str, Any]:
    """The ``n``-th log line about ``setting`` once it is written."""
    await wait_until(
        lambda: len(_lines_about(relay, setting)) >= n, LINE_WAIT_S, f"line {n} about {setting}"
    )
    return _lines_about(relay, setting)[n - 1]


async def _guarded_answers(client: aiohttp.ClientSession, relay: RelayProcess) -> list[int]:
    """Statuses of: a post, /status and /metrics without a token; a post with TOKEN."""
    base = f"http://127.0.0.1:{relay.port}"
    body = orjson.dumps(request(event("pipeline")))
    answers = []
    async with client.post(relay.url, data=body, headers=JSON) as resp:
        answers.append(resp.status)
    for path in ("/status", "/metrics"):
        async with client.get(base + path) as resp:
            answers.append(resp.status)
    async with client.post(relay.url, data=body, headers=JSON | {"DD-API-KEY": TOKEN}) as resp:
        answers.append(resp.status)
    return answers


def _token_config(tmp_path: Path, token_file: Path) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0, "ingest_token_file": str(token_file)},
        outbox={"path": str(tmp_path / "outbox.db")},
    )


async def test_an_emptied_or_removed_token_file_keeps_the_token_in_force(tmp_path: Path) -> None:
    """A token file emptied in place and then removed leaves the last token in force (posts,
    /status and /metrics without it get 403), with a warning each time; a new token written
    to the file then takes effect."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    async with (
        RelayProcess(_token_config(tmp_path, token_file)) as relay,
        aiohttp.ClientSession() as client,
    ):
        _empty(token_file)  # `: > token_file`, or the first half of truncate-then-write
        emptied = await _line_about(relay, TOKEN_SETTING, 1)
        while_empty = await _guarded_answers(client, relay)
        token_file.unlink()
        removed = await _line_about(relay, TOKEN_SETTING, 2)
        while_removed = await _guarded_answers(client, relay)
        token_file.write_text("rotated-token-88\n")
        rotated = await _line_about(relay, TOKEN_SETTING, 3)
        after = await _guarded_answers(client, relay)
    assert [403, 403, 403, 202] == while_empty
    assert [403, 403, 403, 202] == while_removed
    assert [403, 403, 403, 403] == after  # TOKEN is the old one now
    levels = [line["level"] for line in (emptied, removed, rotated)]
    assert ["warning", "warning", "info"] == levels
    assert "is empty" in emptied["error"]


async def test_a_fifo_swapped_in_for_the_token_file_never_stalls_the_relay(
    tmp_path: Path,
) -> None:
    """When the token file's symlink is swapped to a FIFO, the relay warns and keeps its
    token, and /health still answers within a second."""
    (tmp_path / "token.1").write_text(TOKEN + "\n")
    token_file = tmp_path / "token"
    token_file.symlink_to("token.1")
    os.mkfifo(tmp_path / "token.fifo")
    async with (
        RelayProcess(_token_config(tmp_path, token_file)) as relay,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as client,
    ):
        (tmp_path / "token.new").symlink_to("token.fifo")
        (tmp_path / "token.new").rename(token_file)  # atomic, as a Secret update swaps links
        warned = await _line_about(relay, TOKEN_SETTING, 1)
        async with client.get(f"http://127.0.0.1:{relay.port}/health") as resp:
            health = resp.status
        answers = await _guarded_answers(client, relay)
    assert (200, [403, 403, 403, 202]) == (health, answers)
    assert ("warning", "is not a regular file (a FIFO)") == (warned["level"], warned["error"])


@pytest.mark.parametrize(
    ("kind", "content"),
    [("emptied", b""), ("a 16 MiB line", b"k" * (16 << 20))],
)
async def test_an_unusable_api_key_file_keeps_the_last_good_key(
    tmp_path: Path, kind: str, content: bytes
) -> None:
    """An API key file emptied, or replaced by a 16 MiB line, is refused with a warning, and
    events posted afterwards are delivered with the last good key."""
    key_file = tmp_path / "dd-api-key"
    key_file.write_text(KEY + "\n")
    async with FakeIntake(RequireKey(KEY)) as intake, aiohttp.ClientSession() as client:
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(tmp_path / "outbox.db")},
            upstream={"url": intake.url, "api_key_file": str(key_file)},
            flusher={"flush_interval_s": 0.05},
        )
        async with RelayProcess(config) as relay:
            first = await _post(client, relay, "before")
            await intake.wait_for_events(1, timeout_s=15)
            (tmp_path / "next").write_bytes(content)
            (tmp_path / "next").rename(key_file)  # whole, so that no partial file is seen
            warned = await _line_about(relay, KEY_SETTING, 1)
            second = await _post(client, relay, "after")
            await intake.wait_for_events(2, timeout_s=15)
    keys = {r.headers["DD-API-KEY"] for r in intake.received}
    assert ((202, 202), {KEY}) == ((first, second), keys)
    assert "warning" == warned["level"]


async def _post(client: aiohttp.ClientSession, relay: RelayProcess, name: str) -> int:
    body = orjson.dumps(request(event("job", id=name, name=name)))
    async with client.post(relay.url, data=body, headers=JSON) as resp:
        return resp.status


@pytest.mark.parametrize(
    ("setting", "make"),
    [
        (TOKEN_SETTING, _empty),
        (KEY_SETTING, _empty),
        (KEY_SETTING, _oversized),
        (TOKEN_SETTING, _fifo),
    ],
    ids=["empty token file", "empty key file", "oversized key file", "token FIFO"],
)
async def test_a_relay_with_an_unusable_secret_file_refuses_to_start(
    tmp_path: Path, setting: str, make: Callable[[Path], None]
) -> None:
    """``ci-relay serve`` with an empty, oversized or non-regular secret file exits 2 with one
    line naming the setting and the file, at once."""
    secret = tmp_path / "secret"
    make(secret)
    group, key = setting.split(".")
    groups: dict[str, dict[str, object]] = {
        "server": {"port": 0},
        "outbox": {"path": str(tmp_path / "outbox.db")},
    }
    groups.setdefault(group, {})[key] = str(secret)
    config = write_config(tmp_path / "relay.toml", **groups)
    ran = await ci_relay("serve", "--config", str(config), timeout_s=15)
    lines = ran.stderr.strip().splitlines()
    assert (2, 1) == (ran.status, len(lines)), lines
    assert (True, True) == (setting in lines[0], str(secret) in lines[0]), lines


async def test_check_config_refuses_an_empty_secret_file(tmp_path: Path) -> None:
    """``ci-relay check-config`` refuses an empty token file as ``serve`` would: exit 2, one
    line naming the setting and the file."""
    secret = tmp_path / "token"
    _empty(secret)
    config = _token_config(tmp_path, secret)
    ran = await ci_relay("check-config", "--config", str(config))
    lines = ran.stderr.strip().splitlines()
    assert (2, 1) == (ran.status, len(lines)), (ran.stdout, lines)
    assert f"{TOKEN_SETTING}: {secret}: is empty" in lines[0]
