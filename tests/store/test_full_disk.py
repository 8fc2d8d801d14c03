"""A real full disk under a running relay: 503 with Retry-After, nothing lost, resume by itself.

The outbox lives on a small tmpfs of the test's own (the suite runs as root); the relay is a
real subprocess delivering to the fake intake. The disk fills during ingest (the upstream
down, events pile up) and again during delivery (a filler takes the last free byte while
batches are acknowledged); once the filler is removed, ingest and delivery resume without
a restart, every event answered 202 reaches the intake, and SQLite finds the file sound.
At start, a full disk is named as such (the file system, its free space, what is needed),
never as a damaged outbox.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import Accept, FakeIntake, Status
from tests.helpers import API_KEY, JSON, MOUNT, UMOUNT, ci_relay, event_id, tmpfs

FS_SIZE = "2m"
EVENT_PAD = 16_000  # bytes of parameters per event: the disk fills in about a hundred requests
MAX_REQUESTS = 400  # more than the disk can hold: the ingest loop ends by a 503 long before
RETRY_AFTER_S = 3
BALLAST_BYTES = 1024 * 1024  # taken before the relay starts, given back to free space
TIMEOUT_S = 40.0
POLL_S = 0.05


def can_mount(where: Path) -> bool:
    """Whether this process may mount a tmpfs (root in CI; refused in most containers)."""
    where.mkdir()
    probe = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        subprocess.run([UMOUNT, str(where)], check=True)
    where.rmdir()
    return probe.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of the test's own, or a skip saying why there is none."""
    if not can_mount(tmp_path / "probe"):
        pytest.skip("mounting a tmpfs was refused (not root?): no real full disk to test on")
    with tmpfs(tmp_path / "disk", f"size={FS_SIZE}") as mount:
        yield mount


@pytest.fixture
async def intake() -> AsyncIterator[FakeIntake]:
    """The intake, down (503) until the test says otherwise."""
    async with FakeIntake(default=Status(503)) as fake:
        yield fake


def fill(path: Path, limit: int | None = None) -> None:
    """Write ``path`` until the file system has no byte left (or ``limit`` bytes are written)."""
    written, size = 0, 65536
    with open(path, "wb", buffering=0) as file:
        while size and (limit is None or written < limit):
            try:
                written += file.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2  # the last partial chunk may still fit


async def post(client: aiohttp.ClientSession, url: str, item: dict[str, Any]) -> tuple[int, Any]:
    """POST one event; its status and the answer's Retry-After header."""
    async with client.post(url, data=orjson.dumps(request(item)), headers=JSON) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


def big_event(n: int) -> dict[str, Any]:
    return event("job", id=f"disk-{n:05d}", name=f"disk-{n:05d}", parameters={"p": "x" * EVENT_PAD})


def pending(db: Path) -> int:
    """The events in the outbox, read beside the running relay."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(count)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (facts in another process announce nothing) for up to TIMEOUT_S."""
    for _ in range(int(TIMEOUT_S / POLL_S)):
        if await condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")


async def alive(client: aiohttp.ClientSession, relay: RelayProcess) -> bool:
    """Whether the relay answers its liveness probe with 200."""
    async with client.get(f"http://127.0.0.1:{relay.port}/health") as resp:
        return resp.status == 200


async def test_full_disk_during_ingest_and_delivery_loses_nothing_and_resumes(
    small_disk: Path, intake: FakeIntake, tmp_path: Path
) -> None:
    """A disk filled during ingest and again during delivery: 503 with Retry-After, the relay
    stays up, ingest and delivery resume once space is freed, and every 202 is delivered."""
    db = small_disk / "outbox.db"
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(db), "retry_after_s": RETRY_AFTER_S},
        upstream={"url": intake.url, "api_key": API_KEY},
        flusher={"flush_interval_s": 0.05, "batch_max_events": 20},
        retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.2},
    )
    ballast = small_disk / "ballast"
    await asyncio.to_thread(fill, ballast, BALLAST_BYTES)
    accepted: set[str] = set()
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        # 1. Ingest until the disk is full: the upstream is down, so nothing drains.
        refusal: tuple[int, Any] | None = None
        for n in range(MAX_REQUESTS):
            item = big_event(n)
            status, retry_after = await post(client, relay.url, item)
            if status != 202:
                refusal = (status, retry_after)
                break
            accepted.add(event_id(item))
        assert (503, str(RETRY_AFTER_S)) == refusal
        assert len(accepted) > 10

        # 2. Deliver on a full disk: a filler takes what the refused commit left.
        filler = small_disk / "filler"
        await asyncio.to_thread(fill, filler)
        intake.default = Accept()

        def delivered() -> set[str]:
            return {event_id(e) for e in intake.accepted_events}

        await intake.wait_for_events(1, TIMEOUT_S)
        assert (503, str(RETRY_AFTER_S)) == await post(client, relay.url, big_event(90_000))
        assert await alive(client, relay), "the relay is not live on a full disk"
        # Batches go out, but no acknowledgement can be written: the same batch goes again,
        # and every accepted event stays in the outbox.
        sent_before = len(intake.accepted_events)
        await intake.wait_for_events(sent_before + 3 * len(accepted), TIMEOUT_S)
        assert len(delivered()) < len(intake.accepted_events)
        assert len(accepted) == pending(db)

        # 3. Space freed: delivery and ingest resume by themselves.
        filler.unlink()
        ballast.unlink()
        after = big_event(99_999)

        async def takes_events() -> bool:
            status, _ = await post(client, relay.url, after)
            return status == 202

        await until(takes_events, "ingest resumed")
        accepted.add(event_id(after))

        async def drained() -> bool:
            return accepted <= delivered() and pending(db) == 0

        await until(drained, "every accepted event delivered and acknowledged")
        assert 0 == await relay.terminate()

    with closing(sqlite3.connect(db)) as conn:
        assert [("ok",)] == conn.execute("PRAGMA integrity_check").fetchall()
    assert set() == accepted - delivered()
    assert relay.events("the outbox cannot be written; delivery backs off")
    print(
        f"accepted {len(accepted)}, sent {len(intake.accepted_events)} "
        f"({len(intake.accepted_events) - len(delivered())} again after a failed acknowledgement)"
    )


# -- a full disk at start

OPEN_NEEDS = "36 KiB"  # the -shm's 32 KiB and a write-ahead log frame of a 4096-byte page
OUTBOX_COMMANDS = [("serve",), ("outbox", "check"), ("dead-letters", "list")]


async def made_outbox(where: Path, posts: int, crash: bool) -> Path:
    """An outbox a real relay made at ``where`` holding ``posts`` events; with ``crash`` the
    relay is SIGKILLed, so that the events sit in the -wal, else it stops cleanly."""
    where.parent.mkdir()
    config = write_config(
        where.with_suffix(".toml"), server={"port": 0}, outbox={"path": str(where)}
    )
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        for n in range(posts):
            assert (202, None) == await post(client, relay.url, big_event(n))
        assert (-9 if crash else 0) == await (relay.kill() if crash else relay.terminate())
    return where


def digests(*paths: Path) -> dict[str, str]:
    """Each file's SHA-256, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("crashed", [False, True], ids=["closed cleanly", "restored with -wal"])
async def test_full_disk_at_start_names_the_file_system_and_its_space_not_damage(
    small_disk: Path, tmp_path: Path, crashed: bool
) -> None:
    """An outbox copied onto a full disk (closed cleanly, or with its -wal as a backup of a
    crashed relay is): serve, outbox check and dead-letters list refuse in one line naming
    the file system, its free space and what opening needs, saying to free space and not to
    move the file aside; nothing changes, and once space is freed serve opens every event."""
    made = await made_outbox(tmp_path / "made" / "outbox.db", posts=5, crash=crashed)
    outbox = small_disk / "outbox.db"
    copies = [outbox, outbox.with_name("outbox.db-wal")] if crashed else [outbox]
    for copy in copies:
        shutil.copyfile(made.with_name(copy.name), copy)
    before = digests(*copies)
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    filler = small_disk / "filler"
    await asyncio.to_thread(fill, filler)

    refusals = [await ci_relay(*command, "--config", str(config)) for command in OUTBOX_COMMANDS]

    expected = (
        f"ci-relay: outbox {outbox} cannot be opened: the file system at {small_disk} is full "
        f"(0 bytes free; opening the outbox needs at least {OPEN_NEEDS}); free space there, "
        "then try again (the outbox is not damaged: keep it where it is)"
    )
    assert [(2, [expected])] * len(OUTBOX_COMMANDS) == [
        (ran.status, ran.stderr.splitlines()) for ran in refusals
    ]
    assert before == digests(*copies)
    filler.unlink()
    async with RelayProcess(config) as relay:
        assert 0 == await relay.terminate()
    (opened,) = relay.events("outbox opened")
    assert 5 == opened["pending_events"]


async def test_file_system_out_of_inodes_at_start_is_named_with_its_space(tmp_path: Path) -> None:
    """A file system with no inode left for the lock file: serve refuses in one line naming
    the file system, its free space and that no inode is free."""
    if not can_mount(tmp_path / "probe"):
        pytest.skip("mounting a tmpfs was refused (not root?): no real full disk to test on")
    with tmpfs(tmp_path / "disk", "size=1m,nr_inodes=2") as mount:
        outbox = mount / "outbox.db"
        (mount / "taken").touch()  # the root directory takes one inode, this file the other
        config = write_config(tmp_path / "relay.toml", outbox={"path": str(outbox)})

        ran = await ci_relay("serve", "--config", str(config))

    shown = "1.0 MiB"  # the whole size: an empty file takes an inode, no block
    assert (
        2,
        [
            f"ci-relay: cannot lock outbox {outbox}: No space left on device ({outbox}.lock); "
            f"the file system at {mount} is full ({shown} free, no free inode); free space there, "
            "then try again"
        ],
    ) == (ran.status, ran.stderr.splitlines())
