"""The outbox's one writer task, the only user of the write connection: group commit.

Request handlers hand it their rows and await the commit; rows that arrive together share
one transaction (one ``executemany``, one commit), so durable ingest is not capped at one
fsync per request, and one request's failure never rolls back a neighbour's rows.
Maintenance writes (acks, dead-letter moves, recounts) go through the same queue, each in
a transaction of its own, so the counts never race a commit. Ingest comes first: the rows
waiting in a group are committed before the maintenance writes queued with them, and an
ack does not wait for the disk (see ``Writer.apply``). Every transaction also sets
the file's running totals (``outbox_totals``) to the counts it leaves, so that a start
reads them instead of counting the table. Each transaction runs whole on the connection's
thread (``queries.on_thread``): one hand-off from the event loop and back, not one per
statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiosqlite
import structlog

from relay import meters
from relay.config import OutboxSettings
from relay.contract.exceptions import RelayError
from relay.store import queries
from relay.store.once import Once, Stored
from relay.store.outbox_file import TRANSIENT_CODES

logger = structlog.get_logger(__name__)

# A group commit stops growing at this many rows, so one transaction stays short.
_MAX_GROUP_ROWS = 20_000

Row = queries.Row
Counts = tuple[int, int]  # events, bytes
# A maintenance write, run on the write connection's thread inside the transaction the
# writer opens and commits; returns how many events and bytes it removed from the outbox.
Work = Callable[[sqlite3.Connection], Counts]


class OutboxFull(RelayError):
    """Accepting the request would exceed outbox.max_events or outbox.max_bytes."""


class OutboxUnavailable(RelayError):
    """The file could not be read or written; nothing of the operation took effect.

    ``transient``: the cause can pass by itself (disk full, a lock held elsewhere, an I/O
    error), so callers wait and try again. Otherwise the file or its schema is damaged
    (a table gone, corrupt pages), which no retry mends.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class OutboxClosed(RelayError):
    """The outbox is shutting down and takes no more writes."""


class _SynchronousNotRestored(RelayError):
    """The write connection could not be set back to the configured synchronous level
    after an ack: the writer stops rather than commit appends that skip the disk."""


def unavailable(exc: sqlite3.Error) -> OutboxUnavailable:
    """The OutboxUnavailable for a SQLite error, transient or not by its result code (the
    codes the start-up checks never call damage)."""
    code = getattr(exc, "sqlite_errorcode", None)
    transient = code is not None and code & 0xFF in TRANSIENT_CODES
    return OutboxUnavailable(str(exc), transient=transient)


Limit = Literal["max_events", "max_bytes"]


def limit_passed(events: int, size: int, limits: OutboxSettings) -> Limit | None:
    """The outbox limit that ``events`` events of ``size`` bytes in all would pass, if any
    (events first): what a request must leave unpassed to be stored."""
    if events > limits.max_events:
        return "max_events"
    if size > limits.max_bytes:
        return "max_bytes"
    return None


@dataclass
class OutboxCounts:
    """What the outbox holds, and the events that came and left since it was opened.

    The writer sets them all in the step that sees a commit, so that whoever reads them
    (a scrape, ``ci-relay status``) never finds events gone from ``events`` but not yet
    counted where they went: between two reads, ``events`` moves by exactly accepted less
    delivered less dead-lettered (a replay from another process aside).
    """

    events: int = 0
    bytes: int = 0
    accepted_total: int = 0
    delivered_total: int = 0  # deleted after the upstream answered 2xx
    dead_lettered_total: int = 0  # moved to the dead letters

    def full(self, limits: OutboxSettings) -> Limit | None:
        """The limit that even the smallest request (one event of one byte) would pass, if
        any: while one does, every request is refused as OutboxFull (503)."""
        return limit_passed(self.events + 1, self.bytes + 1, limits)


@dataclass(slots=True)
class _Append:
    """Rows to append; with ``once`` (a webhook), those of its items not stored before."""

    rows: list[Row]
    size: int
    done: asyncio.Future[Stored]
    once: Once | None = None


@dataclass(slots=True)
class _Apply:
    """A maintenance write run in a transaction of its own."""

    work: Work
    done: asyncio.Future[None]
    durable: bool
    delivered: int  # what ``work`` removes, counted as it commits
    dead_lettered: int


_Op = _Append | _Apply


class Writer:
    """The task that owns ``conn`` for writing: ``start()``, hand it work, then ``stop()``."""

    def __init__(self, conn: aiosqlite.Connection, settings: OutboxSettings) -> None:
        self._conn = conn
        self._settings = settings
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.counts = OutboxCounts()
        # Set after each commit that added events: the flusher waits on it instead of polling.
        self.appended = asyncio.Event()
        self.commit_seconds = meters.commit_seconds()
        self.group_events = meters.group_events()

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="outbox-writer")

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None
        return self._task

    async def append(self, rows: list[Row], once: Once | None = None) -> Stored:
        """Commit ``rows``, all or none, in the next group; returns once they are committed.

        With ``once`` (a webhook delivery; ``rows`` are its events' rows), only what its
        keys say is new is stored, in the same transaction as the keys. The outbox limits
        are checked against all of ``rows``: a delivery that would pass them is refused
        even if some of its events turn out to be stored already.
        """
        self._check_open()
        done: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(rows, sum(r[2] for r in rows), done, once))
        return await done

    async def apply(
        self, work: Work, *, durable: bool = True, delivered: int = 0, dead_lettered: int = 0
    ) -> None:
        """Run ``work`` in a write transaction of its own, serialised with the appends.

        Not ``durable``: the commit does not wait for the disk (synchronous NORMAL, for
        this transaction only); a power cut may undo it, a crash of the process cannot.
        Meant for acks: an ack undone sends its events again, which at-least-once allows,
        and its pages reach the disk with the next durable commit.
        ``delivered`` and ``dead_lettered``: the events ``work`` removes that way, added to
        the totals with the commit.
        """
        self._check_open()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Apply(work, done, durable, delivered, dead_lettered))
        await done

    async def stop(self) -> None:
        """Commit what was handed in, then end the task; later writes are OutboxClosed."""
        self._closing = True
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task

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
                _fail(op.done, failure)
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
        # Appends first: a runner waits for its 202, delivery does not. The order cannot
        # change what a maintenance write does: appended ids are new and above any batch.
        await self._commit_appends([op for op in group if isinstance(op, _Append)])
        for op in group:
            if isinstance(op, _Apply):
                await self._run_apply(op)

    async def _commit_appends(self, ops: list[_Append]) -> None:
        if not ops:
            return
        events, size = self.counts.events, self.counts.bytes
        accepted: list[_Append] = []
        for op in ops:
            if limit_passed(events + len(op.rows), size + op.size, self._settings) is not None:
                _settle(op.done, OutboxFull("the outbox is full"))
                continue
            events += len(op.rows)
            size += op.size
            accepted.append(op)
        if not accepted:
            return
        started = time.perf_counter()
        before = self.counts.events, self.counts.bytes

        def append(conn: sqlite3.Connection) -> _Appended:
            appended = _rows_to_store(conn, accepted, before)
            conn.executemany(queries.APPEND, appended.rows)
            conn.execute(queries.SET_TOTALS, appended.totals)
            return appended

        try:
            appended = await queries.on_thread(self._conn, transaction(append))
        except sqlite3.Error as exc:
            logger.error("outbox commit failed", error=str(exc), requests=len(accepted))
            for op in accepted:
                _settle(op.done, unavailable(exc))
            return
        self.commit_seconds.observe(time.perf_counter() - started)
        self.group_events.observe(len(appended.rows))
        self.counts.events, self.counts.bytes = appended.totals
        self.counts.accepted_total += len(appended.rows)
        self.counts.dead_lettered_total += sum(stored.dead_letters for stored in appended.stored)
        for op, stored in zip(accepted, appended.stored, strict=True):
            _settle(op.done, stored)
        if appended.rows:
            self.appended.set()

    async def _run_apply(self, op: _Apply) -> None:
        relaxed = not op.durable and self._settings.synchronous != "NORMAL"
        counts = self.counts.events, self.counts.bytes
        apply = transaction(_with_totals(op.work, counts))
        if relaxed:
            apply = _relaxed(apply, self._settings.synchronous)
        try:
            events, size = await queries.on_thread(self._conn, apply)
        except sqlite3.Error as exc:
            _settle(op.done, unavailable(exc))
            return
        self.counts.events, self.counts.bytes = events, size
        self.counts.delivered_total += op.delivered
        self.counts.dead_lettered_total += op.dead_lettered
        _settle(op.done, None)

    def _fail_pending(self, failure: OutboxClosed) -> None:
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if op is not None:
                _fail(op.done, failure)


_T = TypeVar("_T")


def transaction(work: Callable[[sqlite3.Connection], _T]) -> Callable[[sqlite3.Connection], _T]:
    """``work`` then commit, on the connection's thread; rolled back if anything fails."""

    def run(conn: sqlite3.Connection) -> _T:
        try:
            result = work(conn)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except sqlite3.Error as exc:  # the connection is unusable; the next op will say so
                logger.error("outbox rollback failed", error=str(exc))
            raise
        return result

    return run


def _with_totals(work: Work, counts: Counts) -> Callable[[sqlite3.Connection], Counts]:
    """``work``, then the running totals set to ``counts`` less what it removed."""

    def run(conn: sqlite3.Connection) -> Counts:
        removed_events, removed_bytes = work(conn)
        # Never below zero, even if rows another process added were removed before a recount.
        totals = max(0, counts[0] - removed_events), max(0, counts[1] - removed_bytes)
        conn.execute(queries.SET_TOTALS, totals)
        return totals

    return run


def _relaxed(
    work: Callable[[sqlite3.Connection], _T], synchronous: str
) -> Callable[[sqlite3.Connection], _T]:
    """``work`` (a whole transaction) at synchronous NORMAL, then back to ``synchronous``."""

    def run(conn: sqlite3.Connection) -> _T:
        conn.execute(queries.synchronous("NORMAL"))
        try:
            return work(conn)
        finally:
            # Outside any transaction now.
            try:
                conn.execute(queries.synchronous(synchronous))
            except sqlite3.Error as exc:
                raise _SynchronousNotRestored(str(exc)) from exc

    return run


@dataclass(slots=True)
class _Appended:
    """What a group's transaction appended: the rows, each append's outcome, the totals."""

    rows: list[Row]
    stored: list[Stored]
    totals: Counts


def _rows_to_store(conn: sqlite3.Connection, ops: list[_Append], before: Counts) -> _Appended:
    """The rows of ``ops`` to append (a webhook's, less those stored before), inside the
    group's transaction."""
    rows: list[Row] = []
    stored: list[Stored] = []
    events, size = before
    now = time.time()
    for op in ops:
        if op.once is None:
            kept, outcome, kept_size = op.rows, Stored(len(op.rows)), op.size
        else:
            kept, outcome = op.once.store(conn, now)
            kept_size = sum(row[2] for row in kept)
        rows.extend(kept)
        stored.append(outcome)
        events += len(kept)
        size += kept_size
    return _Appended(rows, stored, (events, size))


_Outcome = TypeVar("_Outcome")


def _settle(future: asyncio.Future[_Outcome], outcome: BaseException | _Outcome) -> None:
    # A handler whose client went away may have stopped waiting; its rows are still committed.
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _fail(future: asyncio.Future[Any], failure: BaseException) -> None:
    """``_settle`` with a failure, for a future of any outcome."""
    if not future.done():
        future.set_exception(failure)
