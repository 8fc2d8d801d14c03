"""``ci-relay outbox import``: the pending events of a moved-aside outbox, back into the outbox.

The moved-aside file is only read (``mode=ro``), oldest event first, a chunk at a time. A
chunk SQLite cannot read (a damaged page) is read again one id at a time, so that a bad page
costs only the events on it; a body that is not a JSON object (damage SQLite cannot see)
is left out. Each chunk is appended to the outbox in a short write transaction of its own
and recorded in ``outbox_changes``, as a dead-letter replay is: a relay serving the outbox
counts the events at once and delivers them after those it already holds.

The import's progress (the last id of the file done) is kept beside the file, in
``<file>.import``, written after each commit: a second run finds the import finished and
does nothing; an interrupted one goes on from where it stopped. A crash between a commit
and that write imports the one chunk again (at least once, as everywhere in the relay).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from relay.config import OutboxSettings
from relay.contract.body import NotJSON, loads
from relay.store import outbox_file, queries
from relay.store.deadletters import TARGET_HOLD_S
from relay.store.opening import connect
from relay.store.outbox_file import OutboxError, OutboxMissing
from relay.store.writer import Row, transaction

# Events per write transaction: a few milliseconds of the outbox's write lock.
CHUNK_EVENTS = 500


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did, and what the file held."""

    source: Path
    outbox: Path
    imported: int  # by this run
    earlier: int  # by an interrupted run before it
    not_json: int  # read, but not an event: left out
    pending: int | None  # the events the file's totals name (None: they cannot be read)
    dead_letters: int | None
    finished_before: bool  # a finished import of this file was found: nothing done
    unreadable: str | None  # the first error SQLite gave reading the file

    @property
    def lost(self) -> int | None:
        """The pending events not imported (None: unknown, the file's totals unreadable)."""
        if self.pending is None:
            return None
        return max(0, self.pending - self.imported - self.earlier)

    def lines(self) -> list[str]:
        """The report for a person, one fact a line."""
        if self.finished_before:
            return [
                f"{self.source} was imported already ({self.earlier} event(s)); nothing done: "
                "importing it again would deliver its events twice (delete "
                f"{progress_path(self.source)} to do so all the same)"
            ]
        earlier = f" ({self.earlier} more by an earlier run)" if self.earlier else ""
        shown = [
            f"imported {self.imported} event(s) from {self.source} into {self.outbox}{earlier}"
        ]
        if self.lost is None:
            shown.append("how many events were lost is unknown: the file's totals cannot be read")
        elif self.lost:
            detail = f", {self.not_json} of them not JSON" if self.not_json else ""
            shown.append(f"lost {self.lost} of the file's {self.pending} pending event(s){detail}")
        if self.unreadable is not None:
            shown.append(f"SQLite could not read part of the file: {self.unreadable}")
        if self.dead_letters:
            shown.append(f"its {self.dead_letters} dead letter(s) were not imported")
        return shown


@dataclass(slots=True)
class _Progress:
    """The state of one file's import, as ``<file>.import`` keeps it."""

    last_id: int = 0
    imported: int = 0
    not_json: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Chunk:
    rows: list[Row]
    last_id: int  # the last id looked at
    not_json: int
    end: bool
    error: str | None = None


def progress_path(source: Path) -> Path:
    """Where the import of ``source`` keeps its progress."""
    return source.with_name(source.name + ".import")


async def import_outbox(source: Path, settings: OutboxSettings) -> ImportReport:
    """Append the events ``source`` (a moved-aside outbox) holds to the outbox of
    ``settings``, as far as the file can be read; ``source`` is never written."""
    _refuse_the_outbox_itself(source, settings.path)
    progress = _load_progress(source)
    reader = _open_source(source)
    try:
        pending, dead = _file_counts(reader)
        found = ImportReport(
            source,
            settings.path,
            imported=0,
            earlier=progress.imported,
            not_json=progress.not_json,
            pending=pending,
            dead_letters=dead,
            finished_before=progress.finished,
            unreadable=None,
        )
        if progress.finished:
            return found
        live = await _connect_live(settings)
        try:
            # Before anything is imported: progress that cannot be kept means duplicates.
            _save_progress(source, progress, 0)
            imported, error = await _copy(reader, live, source, settings.path, progress)
        finally:
            await live.close()
    finally:
        reader.close()
    return replace(found, imported=imported, not_json=progress.not_json, unreadable=error)


async def _connect_live(settings: OutboxSettings) -> aiosqlite.Connection:
    """The outbox, which must exist: a mistyped --config must not import into a new file
    that no relay delivers from."""
    try:
        return await connect(
            settings.path,
            settings.synchronous,
            create=False,
            busy_timeout_s=settings.busy_timeout_s,
        )
    except OutboxMissing as exc:
        raise OutboxMissing(
            f"{exc}: start the relay once with this configuration (it creates the outbox), "
            "then import"
        ) from None


def _refuse_the_outbox_itself(source: Path, outbox: Path) -> None:
    if source.exists() and outbox.exists() and os.path.samefile(source, outbox):
        raise OutboxError(f"{source} is the outbox itself: nothing to import")


def _open_source(source: Path) -> sqlite3.Connection:
    """A read-only connection to the moved-aside file; OutboxError if it is none of ours."""
    try:
        with open(source, "rb") as file:
            magic = file.read(len(outbox_file.SQLITE_MAGIC))
    except FileNotFoundError:
        raise OutboxMissing(f"no moved-aside outbox at {source}") from None
    except OSError as exc:
        raise OutboxError(f"cannot read {source}: {exc.strerror or exc}") from None
    if magic != outbox_file.SQLITE_MAGIC:
        raise OutboxError(f"{source} is not a SQLite database: nothing to import")
    try:
        conn = outbox_file.open_read_only(source)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read {source}: {exc}") from None
    try:
        outbox_file.identify(conn, source)
    except sqlite3.Error:
        pass  # a damaged schema: read what can be read
    except OutboxError:
        conn.close()
        raise
    return conn


def _file_counts(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    """The pending events (by the file's totals, else by counting) and the dead letters."""
    pending = _first(conn, queries.READ_TOTALS)
    if pending is None:
        pending = _first(conn, queries.COUNT_EVENTS)  # an outbox older than the totals
    return pending, _first(conn, queries.COUNT_DEAD_LETTERS)


def _first(conn: sqlite3.Connection, query: str) -> int | None:
    try:
        row = conn.execute(query).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row is not None and isinstance(row[0], int) else None


async def _copy(
    reader: sqlite3.Connection,
    live: aiosqlite.Connection,
    source: Path,
    outbox: Path,
    progress: _Progress,
) -> tuple[int, str | None]:
    """Copy the events after ``progress.last_id``, a chunk per transaction; how many, and
    the first error SQLite gave reading the file."""
    top = _last_id(reader)
    imported, error = 0, None
    while True:
        chunk = _read_chunk(reader, progress.last_id, top)
        error = error or chunk.error
        held = 0.0
        if chunk.rows:
            started = time.monotonic()
            await _append(live, chunk.rows, outbox)
            held = time.monotonic() - started
        imported += len(chunk.rows)
        progress.last_id = chunk.last_id
        progress.imported += len(chunk.rows)
        progress.not_json += chunk.not_json
        progress.finished = chunk.end
        _save_progress(source, progress, imported)
        if chunk.end:
            return imported, error
        # Leave the write lock free at least as long as it was held: a relay serving the
        # outbox must find it free within a poll or two, as during a replay.
        await asyncio.sleep(max(held, TARGET_HOLD_S) if chunk.rows else 0)


def _last_id(conn: sqlite3.Connection) -> int | None:
    """The highest id the file gave, for stepping over what cannot be read; None if unknown."""
    found = [_first(conn, query) for query in (queries.LAST_ID_GIVEN, queries.LAST_ID)]
    known = [last for last in found if last is not None]
    return max(known) if known else None


def _read_chunk(conn: sqlite3.Connection, after: int, top: int | None) -> _Chunk:
    """The next events after id ``after``; read one id at a time where a page is damaged."""
    try:
        found = conn.execute(queries.SALVAGE_AFTER, (after, CHUNK_EVENTS)).fetchall()
    except sqlite3.Error as exc:
        if top is None or after >= top:
            return _Chunk([], after, 0, end=True, error=str(exc))
        last = min(after + CHUNK_EVENTS, top)
        chunk = _events(_one_by_one(conn, range(after + 1, last + 1)), last, end=last >= top)
        chunk.error = str(exc)
        return chunk
    if not found:
        return _Chunk([], after, 0, end=True)
    return _events(found, found[-1][0], end=False)


def _one_by_one(conn: sqlite3.Connection, ids: Iterable[int]) -> list[Any]:
    found = []
    for event_id in ids:
        try:
            row = conn.execute(queries.SALVAGE_ONE, (event_id,)).fetchone()
        except sqlite3.Error:
            continue  # on a damaged page: lost
        if row is not None:
            found.append(row)
    return found


def _events(found: list[Any], last_id: int, end: bool) -> _Chunk:
    rows = [row for row in map(_row, found) if row is not None]
    return _Chunk(rows, last_id, len(found) - len(rows), end)


def _row(found: Any) -> Row | None:
    """The row to append for an event read from the file; None if it is not an event."""
    _, received_at, end_at, body = found
    numbers = isinstance(received_at, int | float) and isinstance(end_at, int | float | None)
    if not numbers or not isinstance(body, bytes):
        return None
    try:
        event = loads(body)
    except NotJSON:
        return None
    if not isinstance(event, dict):
        return None
    return float(received_at), None if end_at is None else float(end_at), len(body), body


async def _append(live: aiosqlite.Connection, rows: list[Row], outbox: Path) -> None:
    """Append ``rows`` and record them for a serving relay's counts, in one transaction."""

    def work(conn: sqlite3.Connection) -> None:
        conn.execute(queries.BEGIN_WRITE)
        conn.executemany(queries.APPEND, rows)
        conn.execute(queries.RECORD_ADDED, (len(rows), sum(row[2] for row in rows)))

    try:
        await queries.on_thread(live, transaction(work))
    except sqlite3.Error as exc:
        full = outbox_file.disk_full(outbox, exc, "written")
        raise full or OutboxError(f"cannot write outbox {outbox}: {exc}") from None


def _load_progress(source: Path) -> _Progress:
    path = progress_path(source)
    try:
        return _Progress(**orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        return _Progress()
    except (OSError, orjson.JSONDecodeError, TypeError) as exc:
        raise OutboxError(
            f"cannot read the progress of the import of {source} in {path}: {exc}; delete it "
            "to import the whole file again (events imported already would be delivered twice)"
        ) from None


def _save_progress(source: Path, progress: _Progress, imported: int) -> None:
    """Replace ``<file>.import`` (0600, written to disk) with ``progress``."""
    path = progress_path(source)
    temporary = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, outbox_file.PRIVATE_FILE)
        with open(fd, "wb") as file:
            outbox_file.make_private(fd, outbox_file.PRIVATE_FILE)
            file.write(orjson.dumps(asdict(progress)))
            file.flush()
            os.fsync(fd)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutboxError(
            f"imported {imported} event(s) from {source}, but cannot record it in {path}: "
            f"{exc.strerror or exc}; a second run would import the last "
            f"{min(imported, CHUNK_EVENTS)} again"
        ) from None
