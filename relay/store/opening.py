"""Opening the outbox file for writing: checked before SQLite writes to it
(``relay.store.outbox_file``), then switched to write-ahead logging and migrated.

The daemon's outbox (``relay.store.outbox``) and the commands beside it (dead letters,
``outbox import``) open the file through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

from relay.store import outbox_file, queries
from relay.store.migrate import migrate, refuse_newer
from relay.store.outbox_file import OutboxError, OutboxMissing

logger = structlog.get_logger(__name__)

# How long a dead-letter command waits for the daemon's write lock (held for a commit).
BUSY_TIMEOUT_S = 10.0


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
        refuse_newer(inspection.schema_version, str(path))
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
            full = outbox_file.disk_full(path, exc)
            raise full or OutboxError(f"cannot open outbox {path}: {exc}") from None
        raise
    return OpenedFile(conn, created=size in (None, 0), was_empty=size == 0)


async def _set_up(
    conn: aiosqlite.Connection, path: Path, synchronous: str, busy_timeout_s: float, stamp: bool
) -> None:
    await conn.execute(queries.busy_timeout(busy_timeout_s))
    if stamp:
        # First, so that a file this relay made is recognised as an outbox whatever follows.
        await conn.execute(queries.stamp(outbox_file.APPLICATION_ID))
    ((mode,),) = await conn.execute_fetchall(queries.WAL)
    if mode != "wal":
        raise OutboxError(
            f"outbox {path} cannot use write-ahead logging (journal mode stays {mode}); "
            "keep it on a local file system"
        )
    await conn.execute(queries.synchronous(synchronous))
    await migrate(conn, str(path))


def _remove_new(path: Path) -> None:
    # A file this start created and could not finish holds nothing: leave no half-made outbox.
    for name in (path, *(outbox_file.sidecar(path, s) for s in outbox_file.SIDECARS)):
        with contextlib.suppress(OSError):
            name.unlink()
