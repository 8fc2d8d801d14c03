"""The SQLite outbox: accepted events stay here until the upstream answers 2xx for them.

Writes go through the one writer task (``relay.store.writer``: group commit). Reads (the
flusher's batches) use a second connection: in WAL mode they never block the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import aiosqlite
import structlog

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.contract.intake import ENVELOPE, ENVELOPE_BYTES
from relay.history.records import Record
from relay.store import outbox_file, queries
from relay.store.once import Keyed, Once, Stored, digest, seen
from relay.store.opening import open_file
from relay.store.outbox_file import ServeLock
from relay.store.recent import as_records
from relay.store.writer import Writer, unavailable

logger = structlog.get_logger(__name__)

DeadLetterReason = Literal["rejected", "too_large", "expired", "upstream_error", "invalid"]
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = get_args(DeadLetterReason)

# SQLite's quick check at start stops after this long; a larger file is opened unchecked.
START_CHECK_S = 5.0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event waiting in the outbox."""

    id: int
    received_at: float
    end_at: float | None
    size: int
    attempts: int
    first_failure_at: float | None
    body: bytes


@dataclass(frozen=True)
class Readings:
    """What the file says now, for /metrics and /status: three index reads, no scan."""

    oldest_received_at: float | None
    oldest_end_at: float | None
    dead_letters: dict[str, int]  # by reason


@dataclass(frozen=True)
class KeysPruned:
    """What a prune of the webhook keys deleted; ``bound_age_s``: when the key bound was
    reached, the age of the newest key it deleted (the deduplication window it left)."""

    deleted: int
    bound_age_s: float | None


@dataclass(frozen=True)
class _Pruned:
    """A table the upkeep prunes by age and bound: its queries and its time column."""

    past_bound: str
    time: str
    prune: str


_HISTORY_TABLE = _Pruned(queries.HISTORY_PAST_BOUND, "recorded_at", queries.PRUNE_HISTORY)
_KEYS_TABLE = _Pruned(queries.KEYS_PAST_BOUND, "seen_at", queries.PRUNE_KEYS)

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Batch:
    """The oldest events as one request body, named by their id range.

    The range is ``first_id`` to ``last_id`` without ``excluded`` (a JSON array of ids):
    ids only grow, so no event added later falls inside it.
    """

    first_id: int
    last_id: int
    excluded: str
    events: int
    size: int  # the events' own bytes, envelope and commas left out
    oldest_end_at: float | None
    body: bytes  # {"data":[...]}


class Outbox:
    """Durable FIFO of events. Use ``await Outbox.open(settings)``, then ``close()``."""

    def __init__(
        self, settings: OutboxSettings, conn: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._writer = Writer(conn, settings)
        self.counts = self._writer.counts
        # Set after each commit that added events: the flusher waits on it instead of polling.
        self.appended = self._writer.appended
        self.commit_seconds = self._writer.commit_seconds  # histograms for /metrics
        self.group_events = self._writer.group_events
        self._data_version = -1
        self._lock: ServeLock | None = None
        self.history = True  # settled events leave a record (see open)
        self.acked_fate = "delivered"

    @classmethod
    async def open(
        cls, settings: OutboxSettings, history: bool = True, dry_run: bool = False
    ) -> Outbox:
        """Lock, check and open the outbox file; OutboxError (path and cause) if it cannot be."""
        lock = ServeLock(settings.path)
        outbox_file.prepare_directory(settings.path)
        lock.acquire()
        try:
            outbox = await cls._open_locked(settings, lock)
        except BaseException:
            lock.release()
            raise
        # Whether settled events leave a record in the history (history.max_events > 0), and
        # what an ack means: delivered, or (a dry run) settled without being sent.
        outbox.history = history
        outbox.acked_fate = "not_sent" if dry_run else "delivered"
        return outbox

    @classmethod
    async def _open_locked(cls, settings: OutboxSettings, lock: ServeLock) -> Outbox:
        path = settings.path
        opened = await open_file(
            path,
            settings.synchronous,
            check_s=START_CHECK_S,
            busy_timeout_s=settings.busy_timeout_s,
        )
        reader: aiosqlite.Connection | None = None
        try:
            reader = await aiosqlite.connect(path)
            await reader.execute(queries.busy_timeout(settings.busy_timeout_s))
            pending = await _count_and_clear_changes(opened.conn)
            await reader.execute_fetchall(queries.EVENTS_PROBE)
            ((dead,),) = await reader.execute_fetchall(queries.COUNT_DEAD_LETTERS)
        except BaseException as exc:
            # Both connections' threads would keep the process alive after the error.
            if reader is not None:
                await reader.close()
            await opened.conn.close()
            if isinstance(exc, sqlite3.Error):
                raise outbox_file.store_error(path, exc, "open") from None
            raise
        outbox = cls(settings, opened.conn, reader)
        outbox._lock = lock
        outbox.counts.events, outbox.counts.bytes = pending
        if opened.was_empty:
            logger.warning("outbox file was empty (0 bytes): starting a new outbox", path=str(path))
        logger.info(
            "outbox created" if opened.created else "outbox opened",
            path=str(path),
            pending_events=outbox.counts.events,
            dead_letters=dead,
        )
        outbox._writer.start()
        return outbox

    @property
    def task(self) -> asyncio.Task[None]:
        """The writer task, for the daemon to supervise."""
        return self._writer.task

    async def append(self, events: Sequence[AcceptedEvent]) -> None:
        """Store ``events`` durably, all or none; returns once they are committed."""
        now = time.time()
        await self._writer.append([(now, e.end_at, len(e.body), e.body) for e in events])

    async def append_once(self, delivery: str, items: Sequence[Keyed]) -> Stored:
        """Store a webhook delivery's ``items`` durably: those whose keys are new, none if
        the ``delivery`` key was stored before (``relay.store.once``); refused items become
        dead letters. Returns once committed, saying what was stored."""
        once = Once.of(delivery, items)
        now = time.time()
        rows = [(now, i.end_at, len(i.body), i.body) for i in items if i.refused is None]
        return await self._writer.append(rows, once)

    async def seen_webhook_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are stored already (a look on the reader, before a delivery is
        mapped or validated; ``append_once`` decides in its own transaction)."""
        by_digest = {digest(key): key for key in keys}

        def read(conn: sqlite3.Connection) -> set[str]:
            return {by_digest[found] for found in seen(conn, list(by_digest))}

        return await self._on_reader(read)

    async def pipeline_records(self, pipeline_id: str) -> list[Record]:
        """Every record of one pipeline: settled ones from the history (an index read), then
        pending ones read from the events' JSON (a scan of the pending events)."""
        found = await self._read(queries.HISTORY_OF_PIPELINE, (pipeline_id,))
        return as_records(found.rows)

    async def recent_records(self, settled: int, pending: int) -> list[Record]:
        """The newest ``settled`` records of the history and the newest ``pending`` events."""
        found = await self._read(queries.RECENT_HISTORY, (settled, pending))
        return as_records(found.rows)

    async def compact_history(self, chunk: int = 2000) -> int:
        """Compact the copies the drain made into the fields the page shows, ``chunk`` at a
        time in transactions of their own (ingest's commits come between); how many."""
        done = 0
        while True:
            found = await self._read(queries.RAW_HISTORY, (chunk,))
            if not found.rows:
                return done
            seqs = queries.json_ids(seq for (seq,) in found.rows)

            def work(conn: sqlite3.Connection, seqs: str = seqs) -> tuple[int, int]:
                conn.execute(queries.COMPACT_HISTORY, (seqs,))
                conn.execute(queries.DROP_NOT_EVENTS, (seqs,))
                return 0, 0

            await self._writer.apply(work, durable=False)
            done += len(found.rows)

    async def prune_history(self, keep_s: float, max_records: int, now: float) -> int:
        """Delete the records older than ``keep_s`` and, past ``max_records``, the oldest."""
        deleted, _ = await self._prune(_HISTORY_TABLE, keep_s, max_records, now)
        return deleted

    async def prune_webhook_keys(self, keep_s: float, max_keys: int, now: float) -> KeysPruned:
        """Delete the webhook keys older than ``keep_s`` and, past ``max_keys``, the oldest."""
        deleted, bounded_at = await self._prune(_KEYS_TABLE, keep_s, max_keys, now)
        return KeysPruned(deleted, None if bounded_at is None else now - bounded_at)

    async def _prune(
        self, table: _Pruned, keep_s: float, bound: int, now: float
    ) -> tuple[int, float | None]:
        """Delete ``table``'s rows older than ``keep_s`` and, past ``bound`` rows, the oldest:
        how many, and the time of the newest row the bound cut (None when it cut none).

        The bound is read on the reader connection (an index walk of ``bound`` entries), so
        the writer holds its transaction only for the delete.
        """
        past = await self._read(table.past_bound, (bound,))
        bounded_at: float | None = past.first(table.time)
        cutoff = now - keep_s if bounded_at is None else max(now - keep_s, bounded_at)
        deleted = 0

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            nonlocal deleted
            deleted = conn.execute(table.prune, (cutoff,)).rowcount
            return 0, 0

        await self._writer.apply(work, durable=False)
        return deleted, bounded_at

    async def ack(self, events: Sequence[StoredEvent]) -> None:
        """Delete events the upstream answered 2xx for, in one transaction."""
        ids = _ids(events)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            added, added_bytes = self._absorb_changes(conn)
            self._record(conn, queries.HISTORY_OF_IDS, self.acked_fate, None, ids)
            conn.execute(queries.DELETE_EVENTS, (ids,))
            return len(events) - added, sum(e.size for e in events) - added_bytes

        await self._writer.apply(work, durable=False, delivered=len(events))

    async def record_failure(self, events: Sequence[StoredEvent], now: float) -> None:
        """Count one more failed attempt for ``events``."""
        ids = _ids(events)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            conn.execute(queries.RECORD_FAILURE, (now, ids))
            return 0, 0

        await self._writer.apply(work)

    async def dead_letter(
        self,
        events: Sequence[StoredEvent],
        reason: DeadLetterReason,
        upstream_status: int | None,
        detail: str,
        now: float,
    ) -> None:
        """Move ``events`` to the dead-letter table with the reason, in one transaction."""
        ids = _ids(events)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            # An expired event was never sent: its last failure is not one more attempt.
            sent = 0 if reason == "expired" else 1
            params = (reason, upstream_status, detail, sent, now, now, ids)
            added, added_bytes = self._absorb_changes(conn)
            conn.execute(queries.TO_DEAD_LETTERS, params)
            self._record(conn, queries.HISTORY_OF_IDS, "dead_lettered", reason, ids)
            conn.execute(queries.DELETE_EVENTS, (ids,))
            return len(events) - added, sum(e.size for e in events) - added_bytes

        await self._writer.apply(work, dead_lettered=len(events))

    def _record(
        self, conn: sqlite3.Connection, query: str, fate: str, reason: str | None, *where: object
    ) -> None:
        """Inside a transaction that settles events: their records in the history."""
        if self.history:
            conn.execute(query, (time.time(), fate, reason, *where))

    async def next_batch(
        self, max_events: int, max_bytes: int, exclude: Collection[int] = ()
    ) -> list[StoredEvent]:
        """The oldest events but ``exclude``: at most ``max_events``, and a request body of at
        most ``max_bytes`` (or one event alone, however large)."""
        excluded = queries.json_ids(exclude)

        def read(conn: sqlite3.Connection) -> list[StoredEvent]:
            span = _next_span(conn, max_events, max_bytes, excluded)
            if span is None:
                return []
            found = queries.fetch_now(conn, queries.EVENTS_BETWEEN, (*span, excluded))
            return found.objects(StoredEvent)

        return await self._on_reader(read)

    async def next_request(
        self,
        max_events: int,
        max_bytes: int,
        exclude: Collection[int] = (),
        after: int | None = None,
    ) -> Batch | None:
        """The events ``next_batch`` would give, as one request body SQLite joins, without
        an object per event; None when nothing is pending. With ``after``, the events
        past that id only: the batch that follows one still being sent."""
        excluded = queries.json_ids(exclude)

        def read(conn: sqlite3.Connection) -> Batch | None:
            span = _next_span(conn, max_events, max_bytes, excluded, after)
            if span is None:
                return None
            first, last = span
            ((events, size, oldest_end_at, body),) = conn.execute(
                queries.REQUEST_BETWEEN, (*ENVELOPE, first, last, excluded)
            ).fetchall()
            if not events:  # removed since the sizes were read
                return None
            return Batch(first, last, excluded, events, size, oldest_end_at, body)

        return await self._on_reader(read)

    async def batch_events(self, batch: Batch) -> list[StoredEvent]:
        """The events of ``batch`` one by one (those still pending), for a failed delivery."""
        found = await self._read(
            queries.EVENTS_BETWEEN, (batch.first_id, batch.last_id, batch.excluded)
        )
        return found.objects(StoredEvent)

    async def ack_batch(self, batch: Batch) -> None:
        """Delete the events of ``batch`` after a 2xx, by their id range, in one transaction."""

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            added, added_bytes = self._absorb_changes(conn)
            span = (batch.first_id, batch.last_id, batch.excluded)
            self._record(conn, queries.HISTORY_OF_RANGE, self.acked_fate, None, *span)
            conn.execute(queries.DELETE_BETWEEN, span)
            return batch.events - added, batch.size - added_bytes

        await self._writer.apply(work, durable=False, delivered=batch.events)

    async def events(self, ids: Collection[int]) -> list[StoredEvent]:
        """The pending events of ``ids`` (those still in the outbox), by id."""
        found = await self._read(queries.EVENTS_BY_ID, (queries.json_ids(ids),))
        return found.objects(StoredEvent)

    async def oldest_end_at(self) -> float | None:
        """The earliest end among the pending events: the next to expire (an index read)."""
        return await self._first(queries.OLDEST_END, "end_at")

    async def readings(self) -> Readings:
        """The oldest pending event's receipt and the earliest end, dead letters by reason."""
        return Readings(
            await self.oldest_received_at(),
            await self.oldest_end_at(),
            await self.dead_letters_by_reason(),
        )

    async def dead_letters_by_reason(self) -> dict[str, int]:
        """How many dead letters the file holds, by reason (an index read)."""
        found = await self._read(queries.DEAD_LETTERS_BY_REASON)
        return dict(zip(found.column("reason"), found.column("n"), strict=True))

    async def oldest_received_at(self, exclude: Collection[int] = ()) -> float | None:
        return await self._first(queries.OLDEST_RECEIVED, "received_at", queries.json_ids(exclude))

    async def _first(self, query: str, column: str, *params: object) -> float | None:
        value: float | None = (await self._read(query, params)).first(column)
        return value

    async def _on_reader(self, read: Callable[[sqlite3.Connection], _R]) -> _R:
        """``read`` on the reader connection's thread, in one hand-off (a batch's reads
        together); a failing file is OutboxUnavailable."""
        try:
            return await queries.on_thread(self._reader, read)
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc

    async def _read(self, query: str, params: tuple[object, ...] = ()) -> queries.Result:
        """A read on the reader connection; a failing file is OutboxUnavailable."""
        return await self._on_reader(lambda conn: queries.fetch_now(conn, query, params))

    async def refresh_counts(self) -> None:
        """Add what another process (a dead-letter replay) added to the file since.

        SQLite's data_version on the writer connection changes only on other connections'
        commits, so this costs one cheap query when nothing happened. A replay records what
        it adds in ``outbox_changes``; this takes and zeroes it in the writer's queue, so no
        commit of ours slips in between, and the whole table is never recounted (which cost
        the writer about 120 ms per 300,000 events, once a second while a replay ran).
        """

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            added, added_bytes = self._absorb_changes(conn)
            return -added, -added_bytes  # "removed" counts, negative: added

        await self._writer.apply(work)

    def _absorb_changes(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Take and zero what replays added since the last look (events, bytes), on the
        write connection's thread (only the writer's transactions call it).

        Every write that removes events absorbs first, so that an event replayed and
        delivered between two looks is added before it is subtracted.
        """
        ((version,),) = conn.execute(queries.DATA_VERSION).fetchall()
        if version == self._data_version:
            return 0, 0
        self._data_version = version
        if not conn.in_transaction:
            # Read and zero in one write transaction: a replay's commit between the two
            # would otherwise be zeroed unseen, and its events never counted.
            conn.execute(queries.BEGIN_WRITE)
        ((events, size),) = conn.execute(queries.TAKE_CHANGES).fetchall()
        if events or size:
            conn.execute(queries.CLEAR_CHANGES)
        return int(events), int(size)

    async def close(self) -> None:
        """Commit what was handed in, close both connections, then release the lock."""
        try:
            await self._writer.stop()
        finally:
            try:
                await self._reader.close()
                await self._conn.close()
            finally:
                if self._lock is not None:
                    self._lock.release()


async def _count_and_clear_changes(conn: aiosqlite.Connection) -> tuple[int, int]:
    """The events and bytes at start: the running totals plus what replays recorded, which
    become the new totals. Two rows read, whatever the size of the outbox.

    One write transaction, so that a replay beside the start is either counted or recorded
    for the next ``refresh_counts``, never both or neither.
    """
    await conn.execute(queries.BEGIN_WRITE)
    try:
        pending = await _pending(conn)
        await conn.execute(queries.SET_TOTALS, pending)
        await conn.execute(queries.CLEAR_CHANGES)
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    return pending


async def _pending(conn: aiosqlite.Connection) -> tuple[int, int]:
    """How many events, and how many bytes of them, the file holds (its running totals)."""
    totals = await queries.fetch(conn, queries.READ_TOTALS)
    return totals.first("events"), totals.first("bytes")


def _next_span(
    conn: sqlite3.Connection,
    max_events: int,
    max_bytes: int,
    excluded: str,
    after: int | None = None,
) -> tuple[int, int] | None:
    """The first and last id of the next batch (``excluded`` left out): the oldest events
    that fit ``max_bytes``."""
    params = (excluded, max_events) if after is None else (after, excluded, max_events)
    summed = queries.OLDEST_SIZES_SUMMED if after is None else queries.SIZES_AFTER_SUMMED
    ((first, last, events, size),) = conn.execute(summed, params).fetchall()
    if not events:
        return None
    if ENVELOPE_BYTES + size + events - 1 <= max_bytes:  # a comma between two events
        return first, last
    oldest = queries.fetch_now(
        conn, queries.OLDEST_SIZES if after is None else queries.SIZES_AFTER, params
    )
    if not oldest.rows:
        return None
    ids, sizes = oldest.column("id"), oldest.column("size")
    count, total = 1, ENVELOPE_BYTES + sizes[0]
    for size in sizes[1:]:
        total += size + 1  # the comma before it
        if total > max_bytes:
            break
        count += 1
    return ids[0], ids[count - 1]


def _ids(events: Sequence[StoredEvent]) -> str:
    return queries.json_ids(e.id for e in events)
