"""The outbox's running totals: a start reads them instead of counting the events table."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import aiosqlite
import orjson

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.store import deadletters, queries
from relay.store.migrate import available
from relay.store.outbox import Outbox
from relay.testing.samples import event


def accepted(n: int) -> AcceptedEvent:
    return AcceptedEvent(orjson.dumps(event("job", name=f"job {n}")), end_at=None)


def counted(path: Path) -> tuple[int, int]:
    """The events table counted row by row, through a connection of our own."""
    with closing(sqlite3.connect(path)) as conn:
        (events, size) = conn.execute(queries.COUNT_EVENTS).fetchone()
    return int(events), int(size)


def totals(path: Path) -> tuple[int, int]:
    """What a start reads: the running totals plus what replays recorded."""
    with closing(sqlite3.connect(path)) as conn:
        (events, size) = conn.execute(queries.READ_TOTALS).fetchone()
    return int(events), int(size)


async def test_a_start_takes_its_counts_from_the_running_totals(
    outbox_settings: OutboxSettings,
) -> None:
    """Open reads the counts from the totals row, so a start costs the same at any size."""
    outbox = await Outbox.open(outbox_settings)
    await outbox.append([accepted(n) for n in range(3)])
    await outbox.close()
    with closing(sqlite3.connect(outbox_settings.path)) as conn:
        conn.execute("UPDATE outbox_totals SET events = 1000000, bytes = 7")
        conn.commit()

    outbox = await Outbox.open(outbox_settings)
    try:
        assert (1_000_000, 7) == (outbox.counts.events, outbox.counts.bytes)
    finally:
        await outbox.close()


async def test_totals_stay_right_across_acks_dead_letters_replays_and_restarts(
    outbox_settings: OutboxSettings,
) -> None:
    """After every kind of write, here or in a replay beside the relay or while it is down,
    the totals equal a count of the table and the counts of the next start."""
    path = outbox_settings.path
    outbox = await Outbox.open(outbox_settings)
    try:
        await outbox.append([accepted(n) for n in range(10)])
        batch = await outbox.next_batch(1000, 1 << 30)
        await outbox.ack(batch[:2])
        await outbox.dead_letter(batch[2:4], "rejected", 400, "bad", 0.0)
        await outbox.dead_letter(batch[4:6], "upstream_error", 500, "boom", 0.0)
        assert counted(path) == totals(path)
        assert 2 == await deadletters.replay(path, deadletters.Selection(reason="rejected"))
        assert counted(path) == totals(path)
        await outbox.ack(await outbox.next_batch(1, 1 << 30))
        await outbox.refresh_counts()
        assert counted(path) == totals(path) == (outbox.counts.events, outbox.counts.bytes)
    finally:
        await outbox.close()

    assert 2 == await deadletters.replay(path, deadletters.Selection())  # while it is down
    outbox = await Outbox.open(outbox_settings)
    try:
        assert counted(path) == totals(path) == (outbox.counts.events, outbox.counts.bytes)
        assert 7 == outbox.counts.events
        await outbox.dead_letter(await outbox.next_batch(3, 1 << 30), "expired", None, "old", 0)
        await outbox.append([accepted(n) for n in range(5)])
    finally:
        await outbox.close()

    outbox = await Outbox.open(outbox_settings)
    try:
        assert counted(path) == (outbox.counts.events, outbox.counts.bytes)
        assert 9 == outbox.counts.events
    finally:
        await outbox.close()


async def test_the_migration_counts_an_existing_outbox_once(tmp_path: Path) -> None:
    """An outbox from before the totals gets them from one count, replays recorded included."""
    path = tmp_path / "outbox.db"
    before = [m for m in available() if m.version < 7]
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(queries.CREATE_LEDGER)
        for m in before:
            await conn.executescript(queries.migration_script(m.sql, m.version, m.name, "then"))
        await conn.executemany(queries.APPEND, [(0.0, None, 3, b"{ }"), (0.0, None, 2, b"{}")])
        await conn.execute("UPDATE outbox_changes SET events = 1, bytes = 2")  # a replay's
        await conn.commit()

    outbox = await Outbox.open(OutboxSettings(path=path))
    try:
        assert (2, 5) == (outbox.counts.events, outbox.counts.bytes)
    finally:
        await outbox.close()
