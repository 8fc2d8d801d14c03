"""The SQLite outbox: private files, FIFO batches, group commit, capacity, ack and dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiosqlite
import orjson
import pytest

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.contract.intake import ENVELOPE_BYTES, request_body
from relay.store import deadletters, queries
from relay.store.migrate import migrate
from relay.store.outbox import Outbox, StoredEvent
from relay.store.outbox_file import APPLICATION_ID
from relay.store.writer import OutboxFull
from relay.testing.samples import event

_WAL_HEADER = 32
_FRAME_HEADER = 24


def accepted(kind: str = "pipeline") -> AcceptedEvent:
    """A valid event as the server hands it to the outbox."""
    return AcceptedEvent(orjson.dumps(event(kind)), end_at=None)


def sized(size: int, tag: int) -> AcceptedEvent:
    """An event body of exactly ``size`` bytes, distinguishable by ``tag``."""
    prefix = f'{{"tag":{tag},"pad":"'.encode()
    body = prefix + b"x" * (size - len(prefix) - 2) + b'"}'
    assert size == len(body)
    return AcceptedEvent(body, end_at=None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def stored_bodies(path: Path) -> list[bytes]:
    """The bodies in the events table, in id order, read through a connection of our own."""
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT body FROM events ORDER BY id")]
    finally:
        db.close()


async def all_events(outbox: Outbox) -> list[StoredEvent]:
    return await outbox.next_batch(1_000_000, 1 << 40)


@pytest.fixture
async def outbox(outbox_settings: OutboxSettings) -> AsyncIterator[Outbox]:
    opened = await Outbox.open(outbox_settings)
    yield opened
    await opened.close()


async def test_new_file_and_directory_are_owner_only(tmp_path: Path) -> None:
    """A new outbox file is 0600, its new directory 0700, and its -wal/-shm files private."""
    path = tmp_path / "state" / "ci-relay" / "outbox.db"
    outbox = await Outbox.open(OutboxSettings(path=path))
    try:
        await outbox.append([accepted()])
        assert (0o600, 0o700) == (mode(path), mode(path.parent))
        for suffix in ("-wal", "-shm"):
            if sidecar(path, suffix).exists():
                assert 0 == mode(sidecar(path, suffix)) & 0o077, suffix
    finally:
        await outbox.close()


async def test_existing_readable_file_is_made_owner_only(tmp_path: Path) -> None:
    """An existing outbox file readable by group or others is made 0600 on open."""
    path = tmp_path / "outbox.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    outbox = await Outbox.open(OutboxSettings(path=path))
    await outbox.close()
    assert 0o600 == mode(path)


async def test_append_then_next_batch_oldest_first(outbox: Outbox) -> None:
    """Appended events come back oldest first, with their original bodies."""
    first = [accepted("pipeline"), accepted("job")]
    second = [accepted("step")]
    await outbox.append(first)
    await outbox.append(second)
    batch = await all_events(outbox)
    assert [e.body for e in first + second] == [e.body for e in batch]
    assert batch == sorted(batch, key=lambda e: e.id)
    assert [len(e.body) for e in first + second] == [e.size for e in batch]


async def test_next_batch_honours_max_events(outbox: Outbox) -> None:
    """next_batch returns at most max_events events, the oldest ones."""
    events = [sized(100, tag) for tag in range(5)]
    await outbox.append(events)
    batch = await outbox.next_batch(max_events=3, max_bytes=1 << 20)
    assert [e.body for e in events[:3]] == [e.body for e in batch]


async def test_next_batch_honours_max_bytes(outbox: Outbox) -> None:
    """next_batch stops before the event that would pass max_bytes."""
    events = [sized(100, tag) for tag in range(5)]
    await outbox.append(events)
    batch = await outbox.next_batch(max_events=1000, max_bytes=250)
    assert [e.body for e in events[:2]] == [e.body for e in batch]


@pytest.mark.parametrize(("spare", "taken"), [(0, 3), (-1, 2)])
async def test_a_batch_fills_max_bytes_exactly_and_never_passes_it(
    outbox: Outbox, spare: int, taken: int
) -> None:
    """A request body of exactly max_bytes takes every event; a byte less leaves the last
    one for the next batch, in both batch reads."""
    events = [sized(100, tag) for tag in range(3)]
    await outbox.append(events)
    max_bytes = len(request_body([e.body for e in events])) + spare

    batch = await outbox.next_batch(max_events=1000, max_bytes=max_bytes)
    request = await outbox.next_request(max_events=1000, max_bytes=max_bytes)

    expected = request_body([e.body for e in events[:taken]])
    assert [e.body for e in events[:taken]] == [e.body for e in batch]
    assert request is not None
    assert (expected, taken) == (request.body, request.events)
    assert len(request.body) <= max_bytes


async def test_next_batch_returns_one_event_larger_than_max_bytes(outbox: Outbox) -> None:
    """next_batch returns the oldest event even when it alone exceeds max_bytes."""
    events = [sized(500, 0), sized(100, 1)]
    await outbox.append(events)
    batch = await outbox.next_batch(max_events=1000, max_bytes=100)
    assert [events[0].body] == [e.body for e in batch]


async def test_next_batch_on_empty_outbox(outbox: Outbox) -> None:
    """next_batch on an empty outbox returns no event."""
    assert [] == await outbox.next_batch(max_events=10, max_bytes=1000)


def wal_commits(wal: Path) -> tuple[tuple[int, int], int]:
    """The WAL's salts and how many transactions its current frames commit.

    Each transaction ends with a commit frame (its header's "database size after commit"
    field is non-zero); frames whose salts differ from the header's are stale leftovers.
    """
    data = wal.read_bytes()
    page_size, _, salt1, salt2 = struct.unpack(">IIII", data[8:24])
    commits = 0
    offset = _WAL_HEADER
    while offset + _FRAME_HEADER + page_size <= len(data):
        _, db_pages, frame_salt1, frame_salt2 = struct.unpack(">IIII", data[offset : offset + 16])
        if (frame_salt1, frame_salt2) != (salt1, salt2):
            break
        commits += db_pages != 0
        offset += _FRAME_HEADER + page_size
    return (salt1, salt2), commits


async def _commits_during(outbox: Outbox, path: Path, appends: int, concurrent: bool) -> int:
    """How many transactions ``appends`` one-event appends take, read from the WAL file.

    A read transaction of our own stays open meanwhile, so no checkpoint can reset the WAL.
    """
    wal = sidecar(path, "-wal")
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchall()
        salts_before, before = wal_commits(wal)
        events = [accepted() for _ in range(appends)]
        if concurrent:
            await asyncio.gather(*(outbox.append([e]) for e in events))
        else:
            for e in events:
                await outbox.append([e])
        salts_after, after = wal_commits(wal)
        reader.rollback()
    finally:
        reader.close()
    assert salts_before == salts_after, "the WAL was reset; the commit count is meaningless"
    return after - before


async def test_sequential_appends_commit_once_each(outbox: Outbox, tmp_path: Path) -> None:
    """Each append awaited in turn is one transaction (this validates the WAL commit count)."""
    assert 5 == await _commits_during(outbox, tmp_path / "outbox.db", 5, concurrent=False)


async def test_concurrent_appends_share_commits(outbox: Outbox, tmp_path: Path) -> None:
    """200 concurrent appends all complete, all rows are stored, in fewer than 200 commits."""
    path = tmp_path / "outbox.db"
    before = len(stored_bodies(path))
    commits = await _commits_during(outbox, path, 200, concurrent=True)
    assert 200 == len(stored_bodies(path)) - before
    assert 200 == outbox.counts.events
    assert 1 <= commits < 200, commits


async def test_concurrent_appends_keep_every_body(outbox: Outbox, tmp_path: Path) -> None:
    """Concurrent appends store every body exactly once, each request's events contiguous."""
    requests = [[accepted(), accepted()] for _ in range(50)]
    await asyncio.gather(*(outbox.append(events) for events in requests))
    bodies = stored_bodies(tmp_path / "outbox.db")
    assert sorted(e.body for events in requests for e in events) == sorted(bodies)
    for events in requests:
        start = bodies.index(events[0].body)
        assert [e.body for e in events] == bodies[start : start + len(events)]


async def test_max_events_rejects_whole_append(tmp_path: Path) -> None:
    """An append that would pass max_events raises OutboxFull and stores none of its events."""
    path = tmp_path / "outbox.db"
    outbox = await Outbox.open(OutboxSettings(path=path, max_events=3))
    try:
        kept = [accepted(), accepted()]
        await outbox.append(kept)
        with pytest.raises(OutboxFull):
            await outbox.append([accepted(), accepted()])
        assert (2, [e.body for e in kept]) == (outbox.counts.events, stored_bodies(path))
        await outbox.append([accepted()])
        assert 3 == outbox.counts.events
    finally:
        await outbox.close()


async def test_max_bytes_rejects_whole_append(tmp_path: Path) -> None:
    """An append that would pass max_bytes raises OutboxFull and stores none of its events."""
    path = tmp_path / "outbox.db"
    outbox = await Outbox.open(OutboxSettings(path=path, max_bytes=2048))
    try:
        kept = [sized(1000, 0)]
        await outbox.append(kept)
        with pytest.raises(OutboxFull):
            await outbox.append([sized(500, 1), sized(600, 2)])
        assert (1, 1000, [kept[0].body]) == (
            outbox.counts.events,
            outbox.counts.bytes,
            stored_bodies(path),
        )
    finally:
        await outbox.close()


async def test_ack_deletes_only_given_events(outbox: Outbox) -> None:
    """ack deletes exactly the events it is given and updates the counts."""
    events = [sized(100, tag) for tag in range(4)]
    await outbox.append(events)
    stored = await all_events(outbox)
    await outbox.ack([stored[0], stored[2]])
    remaining = await all_events(outbox)
    assert [stored[1].body, stored[3].body] == [e.body for e in remaining]
    assert (2, 200) == (outbox.counts.events, outbox.counts.bytes)


async def test_dead_letter_moves_events(outbox: Outbox, tmp_path: Path) -> None:
    """dead_letter moves events to dead_letters with reason, status and detail."""
    events = [sized(100, tag) for tag in range(3)]
    await outbox.append(events)
    stored = await all_events(outbox)
    await outbox.dead_letter([stored[1]], "rejected", 400, "bad event", now=1234.5)
    assert [stored[0].body, stored[2].body] == [e.body for e in await all_events(outbox)]
    assert (2, 200) == (outbox.counts.events, outbox.counts.bytes)
    db = sqlite3.connect(tmp_path / "outbox.db")
    try:
        rows = db.execute(
            "SELECT event_id, received_at, reason, upstream_status, detail, attempts, "
            "last_failure_at, body FROM dead_letters"
        ).fetchall()
    finally:
        db.close()
    expected = (stored[1].id, stored[1].received_at, "rejected", 400, "bad event", 1, 1234.5)
    assert [(*expected, stored[1].body)] == rows


async def test_counts_survive_reopen(outbox_settings: OutboxSettings) -> None:
    """Closing and reopening the outbox gives the same event and byte counts."""
    outbox = await Outbox.open(outbox_settings)
    await outbox.append([sized(100, tag) for tag in range(5)])
    await outbox.ack((await all_events(outbox))[:2])
    before = (outbox.counts.events, outbox.counts.bytes)
    await outbox.close()
    reopened = await Outbox.open(outbox_settings)
    try:
        assert (3, 300) == before
        assert before == (reopened.counts.events, reopened.counts.bytes)
    finally:
        await reopened.close()


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1), ("EXTRA", 3)])
async def test_synchronous_setting_is_applied(synchronous: str, level: int, tmp_path: Path) -> None:
    """outbox.synchronous is the writer connection's PRAGMA synchronous; the file is in WAL."""
    path = tmp_path / "outbox.db"
    settings = OutboxSettings.model_validate({"path": path, "synchronous": synchronous})
    outbox = await Outbox.open(settings)
    try:
        rows = list(await outbox._conn.execute_fetchall("PRAGMA synchronous"))
        db = sqlite3.connect(path)
        try:
            journal_mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            db.close()
    finally:
        await outbox.close()
    assert (level, "wal") == (rows[0][0], journal_mode)


async def test_outbox_made_before_the_header_stamp_is_recognised_and_stamped(
    tmp_path: Path,
) -> None:
    """An outbox with the outbox tables but no application_id opens, keeps its rows, is stamped."""
    path = tmp_path / "outbox.db"
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA journal_mode = WAL")
        await migrate(conn, str(path))
        await conn.execute("INSERT INTO events (received_at, size, body) VALUES (0, 2, x'7b7d')")
        await conn.execute("UPDATE outbox_totals SET events = 1, bytes = 2")  # as a relay keeps it
        await conn.commit()

    outbox = await Outbox.open(OutboxSettings(path=path))
    pending = outbox.counts.events
    await outbox.close()

    with closing(sqlite3.connect(path)) as conn:
        stamp = conn.execute("PRAGMA application_id").fetchone()[0]
    assert (1, APPLICATION_ID) == (pending, stamp)


async def test_rows_become_events_by_column_name_whatever_their_order(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """A result maps to StoredEvent by its column names, so the columns' order does not matter."""
    await outbox.append([AcceptedEvent(b'{"n":1}', end_at=1.5)])
    await outbox.record_failure(await all_events(outbox), now=7.0)
    reversed_columns = (
        "SELECT body, first_failure_at, attempts, size, end_at, received_at, id FROM events"
    )
    async with aiosqlite.connect(outbox_settings.path) as conn:
        found = await queries.fetch(conn, reversed_columns)

    assert await all_events(outbox) == found.objects(StoredEvent)


async def test_counts_follow_a_replay_beside_them_without_a_recount(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """Events a replay adds are counted from what it records, even when delivered before the
    next refresh; the counts equal the file's after each step."""
    await outbox.append([accepted("job") for _ in range(3)])
    letters = await outbox.next_batch(1000, 1 << 30)
    await outbox.dead_letter(letters[:2], "rejected", 400, "bad", 0.0)
    assert 1 == outbox.counts.events

    assert 2 == await deadletters.replay(outbox_settings.path, deadletters.Selection())
    # Delivered straight from the file, before the relay looked at what the replay did:
    await outbox.ack(await outbox.next_batch(1000, 1 << 30))
    assert (0, 0) == (outbox.counts.events, outbox.counts.bytes)

    await outbox.append([accepted("job")])
    await outbox.dead_letter((await outbox.next_batch(1000, 1 << 30))[:1], "expired", None, "x", 0)
    assert 1 == await deadletters.replay(outbox_settings.path, deadletters.Selection())
    await outbox.refresh_counts()
    with closing(sqlite3.connect(outbox_settings.path)) as conn:
        expected = conn.execute(queries.COUNT_EVENTS).fetchone()
    assert tuple(expected) == (outbox.counts.events, outbox.counts.bytes)
    assert 1 == outbox.counts.events


async def test_a_request_is_the_batch_joined_in_id_order_and_acked_by_its_range(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """The joined body equals the events' bytes in id order; its ack deletes only its own
    events, sparing an excluded one and events appended or replayed after it was read."""
    await outbox.append([sized(100 + n, n) for n in range(8)])
    first = await all_events(outbox)
    await outbox.dead_letter(first[:1], "rejected", 400, "bad", 0.0)
    held = first[3].id

    request = await outbox.next_request(1000, 1 << 30, exclude=[held])
    assert request is not None
    expected = [e for e in first[1:] if e.id != held]
    assert request_body([e.body for e in expected]) == request.body
    assert (len(expected), sum(e.size for e in expected)) == (request.events, request.size)

    assert 1 == await deadletters.replay(outbox_settings.path, deadletters.Selection())
    await outbox.append([sized(50, 99)])
    await outbox.ack_batch(request)

    left = await all_events(outbox)
    assert [b'{"tag":3,', b'{"tag":0,', b'{"tag":99'] == [e.body[:9] for e in left]
    await outbox.refresh_counts()
    assert (3, sum(e.size for e in left)) == (outbox.counts.events, outbox.counts.bytes)


async def test_a_request_keeps_to_the_byte_cap_as_a_batch_does(outbox: Outbox) -> None:
    """next_request takes the same events as next_batch under a byte cap."""
    await outbox.append([sized(1000, n) for n in range(10)])
    cap = ENVELOPE_BYTES + 3 * 1000 + 2

    request = await outbox.next_request(1000, cap)
    batch = await outbox.next_batch(1000, cap)
    assert request is not None
    assert request_body([e.body for e in batch]) == request.body
    assert 3 == request.events
