"""``ci-relay serve`` on a bad outbox: one line naming the path and the cause, exit 2, file kept.

The relay runs as a real subprocess. Read-only and full file systems are real tmpfs mounts
made by the test (the suite runs as root, which ignores permission bits) and unmounted after.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.helpers import MOUNT, Ran, ci_relay, tmpfs

SERVE_TIMEOUT_S = 20.0
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Exit:
    """How ``serve`` ended: status, stdout lines and stderr lines."""

    status: int
    stdout: list[str]
    stderr: list[str]


def serve_once(tmp_path: Path, outbox: Path) -> Exit:
    """Run ``ci-relay serve`` on ``outbox`` and expect it to exit by itself, quickly."""
    config = write_config(
        tmp_path / "serve-once.toml", server={"port": 0}, outbox={"path": str(outbox)}
    )
    json_log = {"CI_RELAY_LOG__FORMAT": "json"}
    serve = ci_relay("serve", "--config", str(config), env=json_log, timeout_s=SERVE_TIMEOUT_S)
    try:
        result = asyncio.run(serve)
    except TimeoutError as exc:
        pytest.fail(f"serve did not exit within {SERVE_TIMEOUT_S} s: {exc}")
    return Exit(result.status, result.stdout.splitlines(), result.stderr.splitlines())


def assert_refused(result: Exit, outbox: Path, *cause: str) -> None:
    """Exit 2, nothing on stdout, one stderr line naming the outbox and each part of the cause."""
    assert (2, [], 1) == (result.status, result.stdout, len(result.stderr)), result
    line = result.stderr[0]
    assert line.startswith("ci-relay: "), line
    assert str(outbox) in line, line
    for part in cause:
        assert part in line, line


def names(directory: Path) -> list[str]:
    """The names in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(path: Path) -> list[str]:
    """The files beside ``path``, its lock file aside (the lock is the relay's, and harmless)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name + ".lock")


def remount_read_only(where: Path) -> None:
    subprocess.run([MOUNT, "-o", "remount,ro", str(where)], check=True)


def make_outbox(path: Path, events: int = 50) -> None:
    """A real outbox with ``events`` pending events, made by the relay and closed cleanly."""

    async def fill() -> None:
        from relay.config import OutboxSettings
        from relay.contract.schema import parse_request
        from relay.store.outbox import Outbox

        outbox = await Outbox.open(OutboxSettings(path=path))
        try:
            for _ in range(events):
                body = orjson.dumps(request(event("job", name="x" * 2000)))
                await outbox.append(parse_request(body))
        finally:
            await outbox.close()

    asyncio.run(fill())


def test_unwritable_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """An outbox directory that cannot be created (read-only file system) is refused in one line."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        outbox = mount / "state" / "outbox.db"
        result = serve_once(tmp_path, outbox)
    assert_refused(result, outbox, "Read-only file system")


def test_existing_outbox_on_a_read_only_file_system_is_refused_unchanged(tmp_path: Path) -> None:
    """An outbox on a file system remounted read-only is refused in one line and left as it was."""
    with tmpfs(tmp_path / "fs", "size=8m") as mount:
        outbox = mount / "outbox.db"
        make_outbox(outbox)
        before, names = digest(outbox), siblings(outbox)
        remount_read_only(mount)
        result = serve_once(tmp_path, outbox)
        assert (before, names) == (digest(outbox), siblings(outbox))
    assert_refused(result, outbox, "Read-only file system")


def test_full_disk_at_start_is_one_line_and_leaves_no_half_made_outbox(tmp_path: Path) -> None:
    """On a full disk, serve says so in one line, exits 2 and leaves no empty outbox behind."""
    with tmpfs(tmp_path / "full", "size=64k") as mount:
        filler = mount / "filler"
        with open(filler, "wb") as file, pytest.raises(OSError, match="No space left"):
            file.write(b"\0" * 1024 * 1024)
        outbox = mount / "outbox.db"
        result = serve_once(tmp_path, outbox)
        left = [name for name in siblings(outbox) if name.startswith("outbox.db")]
    assert_refused(result, outbox, "full")
    assert [] == left


def test_malformed_file_is_refused_quickly_and_kept_unchanged(tmp_path: Path) -> None:
    """A real outbox with garbage pages is refused in one line (no hang) and never modified."""
    outbox = tmp_path / "state" / "outbox.db"
    make_outbox(outbox, events=200)
    with open(outbox, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        for page in range(4096 * 2, size - 4096, 4096 * 3):  # keep page 1, the header
            file.seek(page)
            file.write(os.urandom(4096))
    before, names = digest(outbox), siblings(outbox)

    result = serve_once(tmp_path, outbox)

    assert_refused(result, outbox, "damaged", "move-aside")
    assert (before, names) == (digest(outbox), siblings(outbox))


def test_sqlite_file_that_is_not_an_outbox_is_refused_untouched(tmp_path: Path) -> None:
    """Another program's SQLite file is refused: no tables added, no switch to WAL, same bytes."""
    (tmp_path / "state").mkdir()
    other = tmp_path / "state" / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        conn.commit()
    before, names = digest(other), siblings(other)

    result = serve_once(tmp_path, other)

    assert_refused(result, other, "not a ci-relay outbox", "customers")
    assert (before, names) == (digest(other), siblings(other))
    with closing(sqlite3.connect(other)) as conn:
        assert ("delete", [("customers",)]) == (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall(),
        )


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    """A file that is not a SQLite database at all is refused in one line and left as it was."""
    outbox = tmp_path / "outbox.db"
    outbox.write_text("these are my notes, not a database\n" * 200)
    before = digest(outbox)

    result = serve_once(tmp_path, outbox)

    assert_refused(result, outbox, "not a SQLite database")
    assert before == digest(outbox)


async def test_zero_byte_file_starts_a_new_outbox_and_says_so(tmp_path: Path) -> None:
    """A 0-byte outbox.db is not reset silently: a warning names it and the outbox is 'created'."""
    outbox = tmp_path / "outbox.db"
    outbox.touch()
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})

    async with RelayProcess(config) as relay:
        assert 0 == await relay.terminate()

    (warning,) = [e for e in relay.logs if e.get("level") == "warning" and "empty" in e["event"]]
    assert str(outbox) == warning["path"]
    (created,) = relay.events("outbox created")
    assert (str(outbox), 0, 0) == (
        created["path"],
        created["pending_events"],
        created["dead_letters"],
    )


async def test_start_up_line_says_created_then_opened_with_the_counts(tmp_path: Path) -> None:
    """The first start logs 'outbox created', the next 'outbox opened' with both counts."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    async with RelayProcess(config) as first, aiohttp.ClientSession() as client:
        body = orjson.dumps(request(event("job"), event("job"), event("stage")))
        async with client.post(first.url, data=body, headers=JSON) as resp:
            assert 202 == resp.status
        assert 0 == await first.terminate()
    with closing(sqlite3.connect(outbox)) as conn:
        conn.execute(
            "INSERT INTO dead_letters (event_id, received_at, reason, detail, attempts, "
            "first_failure_at, last_failure_at, body) "
            "VALUES (999, 0, 'rejected', 'no', 1, 0, 0, x'7b7d')"
        )
        conn.commit()

    async with RelayProcess(config) as second:
        assert 0 == await second.terminate()

    assert ([], [], 1) == (
        first.events("outbox opened"),
        second.events("outbox created"),
        len(first.events("outbox created")),
    )
    (opened,) = second.events("outbox opened")
    assert (str(outbox), 3, 1) == (opened["path"], opened["pending_events"], opened["dead_letters"])


def cli(config: Path, *args: str) -> Ran:
    """Run ``ci-relay ARGS --config CONFIG`` to its end (blocking, as ``serve_once``: async
    tests call both through ``asyncio.to_thread``)."""
    return asyncio.run(ci_relay(*args, "--config", str(config), timeout_s=SERVE_TIMEOUT_S))


async def test_second_serve_on_one_outbox_refuses_naming_the_holder(tmp_path: Path) -> None:
    """A second serve exits 2 naming the first's PID; then one starts after SIGKILL."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    async with RelayProcess(config) as first:
        second = await asyncio.to_thread(serve_once, tmp_path, outbox)
        listing = await asyncio.to_thread(cli, config, "dead-letters", "list")
        assert -9 == await first.kill()
    assert_refused(second, outbox, "in use", f"pid {first.pid}")
    assert (0, "", f"0 dead letter(s) in {outbox}\n") == (
        listing.status,
        listing.stdout,
        listing.stderr,
    )

    # The kernel released the killed relay's lock: a new one starts on the same file.
    async with RelayProcess(config) as third:
        assert 0 == await third.terminate()
    assert 1 == len(third.events("outbox opened"))


async def test_move_aside_refuses_while_served_then_keeps_the_file_for_salvage(
    tmp_path: Path,
) -> None:
    """``outbox move-aside`` refuses beside a running relay; stopped, it renames file and WAL."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        body = orjson.dumps(request(event("job"), event("job")))
        async with client.post(relay.url, data=body, headers=JSON) as resp:
            assert 202 == resp.status
        refused = await asyncio.to_thread(cli, config, "outbox", "move-aside")
        assert -9 == await relay.kill()  # leaves the events in the -wal
    assert (2, f"pid {relay.pid}") == (refused.status, refused.stderr.split("(")[-1][:-2])
    assert outbox.with_name("outbox.db-wal").stat().st_size > 0

    moved = await asyncio.to_thread(cli, config, "outbox", "move-aside")

    assert 0 == moved.status, moved.stderr
    moved_names = [name for name in names(tmp_path) if ".damaged-" in name]
    aside = tmp_path / moved_names[0]
    assert [aside.name, aside.name + "-shm", aside.name + "-wal"] == moved_names
    assert str(aside) in moved.stdout
    assert not outbox.exists()
    with closing(sqlite3.connect(aside)) as conn:
        assert 2 == conn.execute("SELECT count(*) FROM events").fetchone()[0]
    async with RelayProcess(config) as fresh:
        assert 0 == await fresh.terminate()
    assert 1 == len(fresh.events("outbox created"))


def test_outbox_check_reports_a_sound_file_and_a_damaged_one(tmp_path: Path) -> None:
    """``outbox check`` exits 0 with the counts for a sound file, 1 with SQLite's findings."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(outbox)})
    make_outbox(outbox, events=200)

    sound = cli(config, "outbox", "check")
    with open(outbox, "r+b") as file:
        file.seek(4096 * 5)
        file.write(os.urandom(4096 * 4))
    before = digest(outbox)
    broken = cli(config, "outbox", "check")

    assert (0, f"outbox {outbox} is sound: 200 pending event(s), 0 dead letter(s)\n") == (
        sound.status,
        sound.stdout,
    )
    assert (1, f"outbox {outbox} is damaged:") == (
        broken.status,
        broken.stdout.splitlines()[0],
    )
    assert before == digest(outbox)


def truncate(outbox: Path, keep: int) -> None:
    """Cut the file to its first ``keep`` bytes, as a copy or a disk that stopped short would."""
    with open(outbox, "r+b") as file:
        file.truncate(keep)


def from_a_newer_version(outbox: Path, crashed: bool) -> None:
    """Record schema version 9999 in the ledger, as a newer ci-relay would; with ``crashed``,
    in a process that exits without closing, so the version sits in the -wal only."""
    script = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "conn.execute(\"INSERT INTO schema_migrations VALUES (9999, 'future', 'x')\")\n"
        "conn.commit()\n"
        "os._exit(0) if sys.argv[2] == 'crash' else conn.close()\n"
    )
    how = "crash" if crashed else "close"
    subprocess.run([sys.executable, "-c", script, str(outbox), how], check=True, timeout=20)


def overwrite(outbox: Path, offset: int, garbage: bytes) -> None:
    """Write ``garbage`` over the file at ``offset``, as a bad sector or a stray write would."""
    with open(outbox, "r+b") as file:
        file.seek(offset)
        file.write(garbage)


def break_schema(outbox: Path, sql: str) -> None:
    """Change the schema behind SQLite's back (another tool's mistake, a bad restore)."""
    with closing(sqlite3.connect(outbox)) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(sql)
        conn.commit()


def files(outbox: Path) -> dict[str, str]:
    """The digest of the outbox and of each file beside it (its lock file aside); the -shm by
    name only: it is SQLite's index of the -wal, which any reader rebuilds, holding no data."""
    return {
        name: "" if name.endswith("-shm") else digest(outbox.with_name(name))
        for name in siblings(outbox)
    }


DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated in the header": (lambda p: truncate(p, 50), ("damaged", "move-aside")),
    "truncated to its first page": (lambda p: truncate(p, 4096), ("damaged", "move-aside")),
    "truncated mid-page": (lambda p: truncate(p, 4096 * 6 + 1000), ("damaged", "move-aside")),
    "garbage in the header": (
        lambda p: overwrite(p, 16, bytes(range(84))),
        ("damaged", "file is not a database"),
    ),
    "garbage in the first page": (
        lambda p: overwrite(p, 100, b"\xa5" * 3996),
        ("damaged", "move-aside"),
    ),
    "a garbled table definition": (
        lambda p: break_schema(
            p, "UPDATE sqlite_master SET sql = 'CREATE TABLE events (x' WHERE name = 'events'"
        ),
        ("damaged", "malformed database schema"),
    ),
    "the events table gone": (
        lambda p: break_schema(p, "DROP TABLE events"),
        ("damaged", "no such table: events"),
    ),
    "newer schema version": (lambda p: from_a_newer_version(p, False), ("schema version 9999",)),
    "newer schema version in the -wal": (
        lambda p: from_a_newer_version(p, True),
        ("schema version 9999",),
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damage_at_rest_is_refused_in_one_line_and_left_byte_identical(
    tmp_path: Path, damage: str
) -> None:
    """A truncated file or one from a newer version: exit 2, one line, every file unchanged."""
    outbox = tmp_path / "state" / "outbox.db"
    make_outbox(outbox, events=30)
    harm, cause = DAMAGE[damage]
    harm(outbox)
    before = files(outbox)

    result = serve_once(tmp_path, outbox)

    assert_refused(result, outbox, *cause)
    assert before == files(outbox)
