"""The SQLite outbox: accepted events stay here until the upstream answers 2xx for them.

One writer task owns the write connection. Request handlers hand it their rows and await
the commit; rows that arrive together share one transaction (group commit), so durable
ingest is not capped at one fsync per request, and one request's failure never rolls back
a neighbour's rows. Reads (the flusher's batches) use a second connection: in WAL mode
they never block the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import aiosqlite
import structlog

from relay import outbox_file
from relay.config import OutboxSettings
from relay.intake import ENVELOPE_BYTES, MAX_EVENTS_PER_REQUEST
from relay.migrate import migrate
from relay.outbox_file import OutboxError, OutboxMissing, ServeLock
from relay.schema import AcceptedEvent

logger = structlog.get_logger(__name__)

DeadLetterReason = Literal["rejected", "too_large", "expired", "upstream_error"]
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = get_args(DeadLetterReason)

# How long a dead-letter command waits for the daemon's write lock (held for a commit).
BUSY_TIMEOUT_S = 10.0
# SQLite's quick check at start stops after this long; a larger file is opened unchecked.
START_CHECK_S = 5.0

# A group commit stops growing at this many rows, so one transaction stays short.
_MAX_GROUP_ROWS = 20_000

_INSERT = "INSERT INTO events (received_at, end_at, size, body) VALUES (?, ?, ?, ?)"
_COLUMNS = "e.id, e.received_at, e.end_at, e.size, e.attempts, e.first_failure_at, e.body"
# A batch is read in two steps, so that it never loads more than its byte cap however large
# the events behind it: the sizes of the oldest events (ids in a JSON array left out; a
# size precedes the body in the row, so no body is read), then the bodies of those that fit.
_OLDEST_SIZES = (
    "SELECT id, size FROM events WHERE id NOT IN (SELECT value FROM json_each(?)) "
    "ORDER BY id LIMIT ?"
)
_RANGE = (
    f"SELECT {_COLUMNS} FROM events AS e WHERE e.id BETWEEN ? AND ? "
    "AND e.id NOT IN (SELECT value FROM json_each(?)) ORDER BY e.id"
)
_BY_ID = f"SELECT {_COLUMNS} FROM events AS e WHERE e.id IN (SELECT value FROM json_each(?))"


class OutboxFull(Exception):
    """Accepting the request would exceed outbox.max_events or outbox.max_bytes."""


class OutboxUnavailable(Exception):
    """The file could not be read or written; nothing of the operation took effect.

    ``transient``: the cause can pass by itself (disk full, a lock held elsewhere, an I/O
    error), so callers wait and try again. Otherwise the file or its schema is damaged
    (a table gone, corrupt pages), which no retry mends.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


# SQLite's primary result codes for failures that can pass without anyone mending the file.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def unavailable(exc: sqlite3.Error) -> OutboxUnavailable:
    """The OutboxUnavailable for a SQLite error, transient or not by its result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    transient = code is not None and code & 0xFF in _TRANSIENT_CODES
    return OutboxUnavailable(str(exc), transient=transient)


class OutboxClosed(Exception):
    """The outbox is shutting down and takes no more writes."""


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


@dataclass(slots=True)
class _Append:
    rows: list[tuple[float, float | None, int, bytes]]
    size: int
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Apply:
    """A maintenance write (ack, dead-letter) run in a transaction of its own."""

    work: Callable[[aiosqlite.Connection], Awaitable[tuple[int, int]]]
    done: asyncio.Future[None]


_Op = _Append | _Apply


@dataclass
class OutboxCounts:
    events: int = 0
    bytes: int = 0
    accepted_total: int = 0


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """A write connection to a checked outbox file, and whether this start created it."""

    conn: aiosqlite.Connection
    created: bool
    was_empty: bool  # a 0-byte file was found where the outbox should be


async def connect(
    path: Path,
    synchronous: str = "FULL",
    *,
    create: bool = True,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
) -> aiosqlite.Connection:
    """A write connection to the outbox file with the schema current (OutboxError if unusable).

    With ``create`` a missing file is made, owner-only; without it (the dead-letter
    commands) a missing file is OutboxMissing rather than a new empty outbox.
    """
    opened = await open_file(path, synchronous, create=create, busy_timeout_s=busy_timeout_s)
    return opened.conn


async def open_file(
    path: Path,
    synchronous: str = "FULL",
    *,
    create: bool = True,
    check_s: float | None = None,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
) -> OpenedFile:
    """Check the file (``check_s`` bounds SQLite's quick check), then connect and migrate."""
    if create:
        outbox_file.prepare_directory(path)
    size = outbox_file.existing_size(path)
    legacy = False
    if size is None and not create:
        raise OutboxMissing(f"no outbox at {path}")
    if size == 0:
        wal = outbox_file.sidecar(path, "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise OutboxError(f"outbox {path} is empty but its write-ahead log {wal} is not")
        if not create:
            raise OutboxMissing(f"no outbox at {path} (the file is empty)")
    elif size is not None:
        inspection = await asyncio.to_thread(outbox_file.inspect, path, check_s)
        legacy = inspection.legacy
        if not inspection.checked:
            logger.warning("outbox quick check stopped: file too large", path=str(path))
    new = size is None
    if create:
        outbox_file.create_private(path)
    conn = await aiosqlite.connect(path)
    try:
        await _set_up(conn, path, synchronous, busy_timeout_s, stamp=size == 0 or new or legacy)
    except BaseException as exc:
        # aiosqlite's worker thread would keep the process alive after the error.
        await conn.close()
        if new:
            _remove_new(path)
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"cannot open outbox {path}: {exc}") from None
        raise
    return OpenedFile(conn, created=size in (None, 0), was_empty=size == 0)


async def _set_up(
    conn: aiosqlite.Connection, path: Path, synchronous: str, busy_timeout_s: float, stamp: bool
) -> None:
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if stamp:
        # First, so that a file this relay made is recognised as an outbox whatever follows.
        await conn.execute(f"PRAGMA application_id = {outbox_file.APPLICATION_ID}")
    rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
    if rows[0][0] != "wal":
        raise OutboxError(
            f"outbox {path} cannot use write-ahead logging (journal mode stays {rows[0][0]}); "
            "keep it on a local file system"
        )
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    await migrate(conn, str(path))


def _remove_new(path: Path) -> None:
    # A file this start created and could not finish holds nothing: leave no half-made outbox.
    for name in (path, *(outbox_file.sidecar(path, s) for s in outbox_file.SIDECARS)):
        with contextlib.suppress(OSError):
            name.unlink()


class Outbox:
    """Durable FIFO of events. Use ``await Outbox.open(settings)``, then ``close()``."""

    def __init__(
        self, settings: OutboxSettings, writer: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._reader = reader
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._closing = False
        self.counts = OutboxCounts()
        # Set after each commit that added events: the flusher waits on it instead of polling.
        self.appended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._data_version = -1
        self._lock: ServeLock | None = None

    @classmethod
    async def open(cls, settings: OutboxSettings) -> Outbox:
        """Lock, check and open the outbox file; OutboxError (path and cause) if it cannot be."""
        lock = ServeLock(settings.path)
        outbox_file.prepare_directory(settings.path)
        lock.acquire()
        try:
            return await cls._open_locked(settings, lock)
        except BaseException:
            lock.release()
            raise

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
            await reader.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_s * 1000)}")
            counts = list(await reader.execute_fetchall(_COUNT))
            dead = list(await reader.execute_fetchall(_COUNT_DEAD))
        except BaseException as exc:
            # Both connections' threads would keep the process alive after the error.
            if reader is not None:
                await reader.close()
            await opened.conn.close()
            if isinstance(exc, sqlite3.Error):
                raise outbox_file.damaged(path, str(exc)) from None
            raise
        outbox = cls(settings, opened.conn, reader)
        outbox._lock = lock
        outbox.counts.events, outbox.counts.bytes = counts[0][0], counts[0][1]
        if opened.was_empty:
            logger.warning("outbox file was empty (0 bytes): starting a new outbox", path=str(path))
        logger.info(
            "outbox created" if opened.created else "outbox opened",
            path=str(path),
            pending_events=outbox.counts.events,
            dead_letters=dead[0][0],
        )
        outbox._task = asyncio.create_task(outbox._write_loop(), name="outbox-writer")
        return outbox

    @property
    def task(self) -> asyncio.Task[None]:
        """The writer task, for the daemon to supervise."""
        assert self._task is not None
        return self._task

    async def append(self, events: Sequence[AcceptedEvent]) -> None:
        """Store ``events`` durably, all or none; returns once they are committed."""
        self._check_open()
        now = time.time()
        rows = [(now, e.end_at, len(e.body), e.body) for e in events]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(rows, sum(r[2] for r in rows), done))
        await done

    async def apply(
        self, work: Callable[[aiosqlite.Connection], Awaitable[tuple[int, int]]]
    ) -> None:
        """Run ``work`` in a write transaction of its own, serialised with the appends.

        ``work`` returns how many events and bytes it removed from the outbox.
        """
        self._check_open()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Apply(work, done))
        await done

    async def ack(self, events: Sequence[StoredEvent]) -> None:
        """Delete events the upstream answered 2xx for, in one transaction."""
        ids = _ids(events)

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            await conn.execute(_DELETE, (ids,))
            return len(events), sum(e.size for e in events)

        await self.apply(work)

    async def record_failure(self, events: Sequence[StoredEvent], now: float) -> None:
        """Count one more failed attempt for ``events``."""
        ids = _ids(events)

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            await conn.execute(_FAILED, (now, ids))
            return 0, 0

        await self.apply(work)

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

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            # An expired event was never sent: its last failure is not one more attempt.
            sent = 0 if reason == "expired" else 1
            params = (reason, upstream_status, detail, sent, now, now, ids)
            await conn.execute(_TO_DEAD_LETTERS, params)
            await conn.execute(_DELETE, (ids,))
            return len(events), sum(e.size for e in events)

        await self.apply(work)

    async def next_batch(
        self, max_events: int, max_bytes: int, exclude: Collection[int] = ()
    ) -> list[StoredEvent]:
        """The oldest events but ``exclude``: at most ``max_events``, and a request body of at
        most ``max_bytes`` (or one event alone, however large)."""
        excluded = _json_ids(exclude)
        sizes = await self._read(_OLDEST_SIZES, (excluded, max_events))
        if not sizes:
            return []
        first, last = sizes[0][0], sizes[0][0]
        total = ENVELOPE_BYTES + sizes[0][1]
        for event_id, size in sizes[1:]:
            total += size + 1  # the comma before it
            if total > max_bytes:
                break
            last = event_id
        rows = await self._read(_RANGE, (first, last, excluded))
        return [StoredEvent(*row) for row in rows]

    async def events(self, ids: Collection[int]) -> list[StoredEvent]:
        """The pending events of ``ids`` (those still in the outbox), by id."""
        rows = await self._read(_BY_ID + " ORDER BY e.id", (_json_ids(ids),))
        return [StoredEvent(*row) for row in rows]

    async def oldest_end_at(self) -> float | None:
        """The earliest end among the oldest pending events (the next batches to go)."""
        rows = await self._read(_OLDEST_END)
        return rows[0][0] if rows else None

    async def oldest_received_at(self, exclude: Collection[int] = ()) -> float | None:
        rows = await self._read(_OLDEST_RECEIVED, (_json_ids(exclude),))
        return rows[0][0] if rows else None

    async def _read(self, query: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read on the reader connection; a failing file is OutboxUnavailable."""
        try:
            return list(await self._reader.execute_fetchall(query, params))
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc

    async def refresh_counts(self) -> None:
        """Recount from the file if another process (a dead-letter replay) committed to it.

        SQLite's data_version on the writer connection changes only on other connections'
        commits, so this costs one cheap query when nothing happened. It runs in the
        writer's queue, so no commit of ours can slip between the count and its use.
        """

        async def work(conn: aiosqlite.Connection) -> tuple[int, int]:
            rows = list(await conn.execute_fetchall("PRAGMA data_version"))
            if rows[0][0] == self._data_version:
                return 0, 0
            self._data_version = rows[0][0]
            counted = list(await conn.execute_fetchall(_COUNT))
            return self.counts.events - counted[0][0], self.counts.bytes - counted[0][1]

        await self.apply(work)

    async def close(self) -> None:
        """Commit what was handed in, close both connections, then release the lock."""
        self._closing = True
        try:
            if self._task is not None and not self._task.done():
                self._queue.put_nowait(None)
                await self._task
        finally:
            try:
                await self._reader.close()
                await self._writer.close()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def _check_open(self) -> None:
        if self._closing or (self._task is not None and self._task.done()):
            raise OutboxClosed("the outbox is closed")

    async def _write_loop(self) -> None:
        group: list[_Op] = []
        try:
            while True:
                op = await self._queue.get()
                if op is None:
                    return
                group, stop = self._drain(op)
                await self._write_group(group)
                if stop:
                    return
        except BaseException as exc:
            # Nobody may wait forever on a writer that is gone: its group included.
            self._closing = True
            failure = OutboxClosed(f"outbox writer stopped: {exc!r}")
            for op in group:
                _settle(op.done, failure)
            self._fail_pending(failure)
            raise

    def _drain(self, first: _Op) -> tuple[list[_Op], bool]:
        group = [first]
        rows = len(first.rows) if isinstance(first, _Append) else 0
        while rows < _MAX_GROUP_ROWS and not self._queue.empty():
            op = self._queue.get_nowait()
            if op is None:
                return group, True
            group.append(op)
            rows += len(op.rows) if isinstance(op, _Append) else 0
        return group, False

    async def _write_group(self, group: list[_Op]) -> None:
        appends: list[_Append] = []
        for op in group:
            if isinstance(op, _Append):
                appends.append(op)
                continue
            await self._commit_appends(appends)
            appends = []
            await self._run_apply(op)
        await self._commit_appends(appends)

    async def _commit_appends(self, ops: list[_Append]) -> None:
        if not ops:
            return
        events, size = self.counts.events, self.counts.bytes
        accepted: list[_Append] = []
        rows: list[tuple[float, float | None, int, bytes]] = []
        for op in ops:
            if (
                events + len(op.rows) > self._settings.max_events
                or size + op.size > self._settings.max_bytes
            ):
                _settle(op.done, OutboxFull("the outbox is full"))
                continue
            events += len(op.rows)
            size += op.size
            rows.extend(op.rows)
            accepted.append(op)
        if not accepted:
            return
        try:
            await self._writer.executemany(_INSERT, rows)
            await self._writer.commit()
        except sqlite3.Error as exc:
            await self._rollback()
            logger.error("outbox commit failed", error=str(exc), requests=len(accepted))
            for op in accepted:
                _settle(op.done, unavailable(exc))
            return
        self.counts.events, self.counts.bytes = events, size
        self.counts.accepted_total += len(rows)
        for op in accepted:
            _settle(op.done, None)
        self.appended.set()

    async def _run_apply(self, op: _Apply) -> None:
        try:
            removed_events, removed_bytes = await op.work(self._writer)
            await self._writer.commit()
        except sqlite3.Error as exc:
            await self._rollback()
            _settle(op.done, unavailable(exc))
            return
        # Never below zero, even if rows another process added were removed before a recount.
        self.counts.events = max(0, self.counts.events - removed_events)
        self.counts.bytes = max(0, self.counts.bytes - removed_bytes)
        _settle(op.done, None)

    async def _rollback(self) -> None:
        try:
            await self._writer.rollback()
        except sqlite3.Error as exc:  # the connection is unusable; the next op will say so
            logger.error("outbox rollback failed", error=str(exc))

    def _fail_pending(self, failure: OutboxClosed) -> None:
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if op is not None:
                _settle(op.done, failure)


# Ids travel as one JSON array parameter, whatever their number.
_DELETE = "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))"
_FAILED = (
    "UPDATE events SET attempts = attempts + 1, first_failure_at = coalesce(first_failure_at, ?) "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
_TO_DEAD_LETTERS = (
    "INSERT INTO dead_letters (event_id, received_at, reason, upstream_status, detail, attempts, "
    "first_failure_at, last_failure_at, end_at, body) "
    "SELECT id, received_at, ?, ?, ?, attempts + ?, coalesce(first_failure_at, ?), ?, end_at, body "
    "FROM events WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
)
_OLDEST_RECEIVED = (
    "SELECT received_at FROM events WHERE id NOT IN (SELECT value FROM json_each(?)) "
    "ORDER BY id LIMIT 1"
)
_OLDEST_END = (
    "SELECT min(end_at) FROM (SELECT end_at FROM events ORDER BY id "
    f"LIMIT {MAX_EVENTS_PER_REQUEST})"
)
_COUNT = "SELECT count(*), coalesce(sum(size), 0) FROM events"
_COUNT_DEAD = "SELECT count(*) FROM dead_letters"


def _ids(events: Sequence[StoredEvent]) -> str:
    return _json_ids(e.id for e in events)


def _json_ids(ids: Iterable[int]) -> str:
    """Ids as one JSON array, the form every query here takes them in."""
    return "[" + ",".join(str(i) for i in ids) + "]"


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    # A handler whose client went away may have stopped waiting; its rows are still committed.
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
