"""Every SQL statement of the store, by name, and how a result row becomes an object.

Ids travel as one JSON array parameter (``json_ids``), whatever their number. A result
keeps its column names (``fetch``), and its rows become objects by those names, never by
position. The schema itself is not here: it is the migrations' (``relay.store.migrate``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_IN_IDS = "IN (SELECT value FROM json_each(?))"

# -- the outbox proper: events waiting for the upstream's 2xx

_INTO_EVENTS = "INSERT INTO events (received_at, end_at, size, body)"
APPEND = f"{_INTO_EVENTS} VALUES (?, ?, ?, ?)"
# received_at, end_at, size, body: the parameters of APPEND.
Row = tuple[float, float | None, int, bytes]

_EVENT = "id, received_at, end_at, size, attempts, first_failure_at, body"
# A batch is read in two steps, so that it never loads more than its byte cap however large
# the events behind it: the sizes of the oldest events (ids in a JSON array left out; a
# size precedes the body in the row, so no body is read), then the bodies of those that fit.
OLDEST_SIZES = f"SELECT id, size FROM events WHERE id NOT {_IN_IDS} ORDER BY id LIMIT ?"
# The same past an id: the batch after one being sent, read while it is sent and acked.
SIZES_AFTER = f"SELECT id, size FROM events WHERE id > ? AND id NOT {_IN_IDS} ORDER BY id LIMIT ?"
# Both summed inside SQLite first: when the oldest events fit the byte cap together (the
# usual case) the batch is their id range, and no row of sizes reaches Python.
_SUMMED = (
    "SELECT min(id) AS first, max(id) AS last, count(*) AS events, "
    "coalesce(sum(size), 0) AS bytes FROM"
)
OLDEST_SIZES_SUMMED = f"{_SUMMED} ({OLDEST_SIZES})"
SIZES_AFTER_SUMMED = f"{_SUMMED} ({SIZES_AFTER})"
EVENTS_BETWEEN = (
    f"SELECT {_EVENT} FROM events WHERE id BETWEEN ? AND ? AND id NOT {_IN_IDS} ORDER BY id"
)
# A batch as the upstream's request body, built inside SQLite: ?1 and ?2 the envelope
# around the bodies, joined with commas in id order (the rowid range is read in order).
REQUEST_BETWEEN = (
    "SELECT count(*) AS events, coalesce(sum(size), 0) AS bytes, min(end_at) AS oldest_end_at, "
    "CAST(?1 || group_concat(body, ',') || ?2 AS BLOB) AS body FROM (SELECT size, end_at, body "
    "FROM events WHERE id BETWEEN ?3 AND ?4 AND id NOT IN (SELECT value FROM json_each(?5)) "
    "ORDER BY id)"
)
EVENTS_BY_ID = f"SELECT {_EVENT} FROM events WHERE id {_IN_IDS} ORDER BY id"
OLDEST_RECEIVED = f"SELECT received_at FROM events WHERE id NOT {_IN_IDS} ORDER BY id LIMIT 1"
# The earliest end among all pending events: the next to expire (index events_by_end).
OLDEST_END = "SELECT min(end_at) AS end_at FROM events"
COUNT_EVENTS = "SELECT count(*) AS events, coalesce(sum(size), 0) AS bytes FROM events"
DELETE_EVENTS = f"DELETE FROM events WHERE id {_IN_IDS}"
# A delivered batch by its id range: ids only grow, so the range holds no event added since.
DELETE_BETWEEN = f"DELETE FROM events WHERE id BETWEEN ? AND ? AND id NOT {_IN_IDS}"
RECORD_FAILURE = (
    "UPDATE events SET attempts = attempts + 1, first_failure_at = coalesce(first_failure_at, ?) "
    f"WHERE id {_IN_IDS}"
)

# -- dead letters: events the upstream refused, or that expired, kept for an operator

# The one way a dead letter is made: (reason, upstream_status, detail, attempts added,
# failure time, failure time, ids).
TO_DEAD_LETTERS = (
    "INSERT INTO dead_letters (event_id, received_at, reason, upstream_status, detail, attempts, "
    "first_failure_at, last_failure_at, end_at, body) "
    "SELECT id, received_at, ?, ?, ?, attempts + ?, coalesce(first_failure_at, ?), ?, end_at, body "
    f"FROM events WHERE id {_IN_IDS} ORDER BY id"
)
# -- the recent history (migration 9): copies of settled events, compacted by the upkeep

# The resource's fields a record keeps, in the order of its ``fields`` array.
RECORD_FIELDS = (
    "level",
    "unique_id",
    "id",
    "pipeline_unique_id",
    "pipeline_name",
    "name",
    "status",
    "start",
    "queue_time",
    "url",
    "error.message",
    "error.type",
    "stage_id",
    "stage_name",
    "job_id",
    "job_name",
    "partial_retry",
)
_FIELDS = (
    "json_extract(body, " + ", ".join(f"'$.attributes.resource.{f}'" for f in RECORD_FIELDS) + ")"
)
_PIPELINE_ID = (
    "coalesce(json_extract(body, '$.attributes.resource.pipeline_unique_id'), "
    "json_extract(body, '$.attributes.resource.unique_id'))"
)
# An event's body that is JSON and an event (a salvaged body may be neither: no record).
_AN_EVENT = "json_valid(body) AND json_type(body, '$.attributes.resource.level') = 'text'"
_INTO_HISTORY = (
    "INSERT INTO history (recorded_at, fate, reason, received_at, end_at, body) "
    "SELECT ?1, ?2, ?3, received_at, end_at, body FROM events "
)
# (recorded_at, fate, reason, first id, last id, excluded ids): a batch acked by its range.
HISTORY_OF_RANGE = (
    _INTO_HISTORY + f"WHERE id BETWEEN ?4 AND ?5 AND id NOT {_IN_IDS.replace('?', '?6')}"
)
# (recorded_at, fate, reason, ids): events acked or dead-lettered by their ids.
HISTORY_OF_IDS = _INTO_HISTORY + f"WHERE id {_IN_IDS.replace('?', '?4')}"
# Compaction, a chunk at a time: the oldest copies become their fields, and a copy that is
# no event is dropped.
RAW_HISTORY = "SELECT seq FROM history WHERE body IS NOT NULL ORDER BY seq LIMIT ?"
COMPACT_HISTORY = (
    f"UPDATE history SET pipeline_id = {_PIPELINE_ID}, fields = {_FIELDS}, body = NULL "
    f"WHERE seq {_IN_IDS} AND {_AN_EVENT}"
)
DROP_NOT_EVENTS = f"DELETE FROM history WHERE seq {_IN_IDS} AND body IS NOT NULL"
# Rows of records: (fate, reason, received_at, end_at, fields, body); a row has its fields
# (compacted) or its body (read in Python, relay.store.recent).
_ROW = "fate, reason, received_at, end_at, fields, body"
_PENDING = (
    "SELECT 'pending' AS fate, NULL AS reason, received_at, end_at, NULL AS fields, body "
    "FROM events"
)
# A pipeline's records: settled ones (compacted, or copies not yet), then pending ones (a
# scan of the pending events).
HISTORY_OF_PIPELINE = (
    f"SELECT {_ROW} FROM history WHERE pipeline_id = ?1 "
    f"OR (body IS NOT NULL AND json_valid(body) AND {_PIPELINE_ID} = ?1) "
    f"UNION ALL {_PENDING} WHERE json_valid(body) AND {_PIPELINE_ID} = ?1"
)
# The newest records: settled (the latest ?1) and pending (the latest ?2).
RECENT_HISTORY = (
    f"SELECT * FROM (SELECT {_ROW} FROM history ORDER BY seq DESC LIMIT ?1) "
    f"UNION ALL SELECT * FROM ({_PENDING} "
    "WHERE id > (SELECT coalesce(max(id), 0) - ?2 FROM events))"
)
# The recorded_at of the record the given number of places from the newest.
HISTORY_PAST_BOUND = "SELECT recorded_at FROM history ORDER BY seq DESC LIMIT 1 OFFSET ?"
PRUNE_HISTORY = "DELETE FROM history WHERE recorded_at <= ?"

# -- webhook keys (relay.store.once): what deduplicates webhooks, stored with their events

ADD_KEY = "INSERT OR IGNORE INTO webhook_keys (key, seen_at) VALUES (?, ?)"
# At most this many keys are looked up by one statement (SQLite's bound is 32,766).
MAX_KEYS_PER_LOOKUP = 500
# The seen_at of the key that is the given number of places from the newest: keys at or
# before it are past the bound (an index read of that many entries, on the reader).
KEYS_PAST_BOUND = "SELECT seen_at FROM webhook_keys ORDER BY seen_at DESC LIMIT 1 OFFSET ?"
PRUNE_KEYS = "DELETE FROM webhook_keys WHERE seen_at <= ?"
COUNT_DEAD_LETTERS = "SELECT count(*) AS dead_letters FROM dead_letters"
# Dead letters by reason, from the index dead_letters_by_reason.
DEAD_LETTERS_BY_REASON = "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason"
# A dead letter is named by its event's outbox id.
DEAD_LETTERS_OF_REASON = (
    "SELECT d.event_id AS id, d.received_at, d.reason, d.upstream_status, d.detail, d.attempts, "
    "d.first_failure_at, d.last_failure_at, d.body "
    "FROM dead_letters AS d WHERE ?1 IS NULL OR d.reason = ?1 ORDER BY d.id"
)
UNKNOWN_DEAD_LETTER_IDS = (
    "SELECT value AS id FROM json_each(?1) "
    "WHERE value NOT IN (SELECT event_id FROM dead_letters) ORDER BY value"
)
# The dead letters an operator's selection names: ?1 a reason, ?2 a JSON array of ids,
# ?3 a time their last failure precedes; a NULL matches every dead letter.
SELECTED = (
    "(?1 IS NULL OR reason = ?1) "
    "AND (?2 IS NULL OR event_id IN (SELECT value FROM json_each(?2))) "
    "AND (?3 IS NULL OR last_failure_at < ?3)"
)
COUNT_SELECTED = f"SELECT count(*) AS dead_letters FROM dead_letters WHERE {SELECTED}"
# The next chunk of a replay or purge: ?4 the last id done, ?5 the chunk's size.
NEXT_CHUNK = f"SELECT id FROM dead_letters WHERE id > ?4 AND {SELECTED} ORDER BY id LIMIT ?5"
REPLAY_CHUNK = (
    f"{_INTO_EVENTS} SELECT ?1, end_at, length(body), body "
    "FROM dead_letters WHERE id IN (SELECT value FROM json_each(?2)) ORDER BY id"
)
DELETE_CHUNK = "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?1))"
# What a replay chunk adds to the events table, for the daemon's counts (outbox_changes).
RECORD_REPLAYED = (
    "UPDATE outbox_changes SET (events, bytes) = (SELECT events + count(*), "
    "bytes + coalesce(sum(length(body)), 0) FROM dead_letters WHERE id IN "
    "(SELECT value FROM json_each(?1)))"
)
TAKE_CHANGES = "SELECT events, bytes FROM outbox_changes"
# The events table's running totals (outbox_totals), set by the daemon's writer in each of
# its transactions: with what replays recorded since, what the table holds.
# One indexed read of the events table at start: a table gone is found before serving,
# now that the start reads the totals row instead of counting the table.
EVENTS_PROBE = "SELECT id FROM events ORDER BY id LIMIT 1"
READ_TOTALS = (
    "SELECT t.events + c.events AS events, t.bytes + c.bytes AS bytes "
    "FROM outbox_totals AS t, outbox_changes AS c"
)
SET_TOTALS = "UPDATE outbox_totals SET events = ?, bytes = ?"
CLEAR_CHANGES = "UPDATE outbox_changes SET events = 0, bytes = 0"
BEGIN_WRITE = "BEGIN IMMEDIATE"

# -- importing a moved-aside outbox (relay.store.salvage): its events, as far as the file reads

SALVAGE_AFTER = "SELECT id, received_at, end_at, body FROM events WHERE id > ? ORDER BY id LIMIT ?"
SALVAGE_ONE = "SELECT id, received_at, end_at, body FROM events WHERE id = ?"
# The highest id the file ever gave (AUTOINCREMENT keeps it), else its highest event's.
LAST_ID_GIVEN = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
LAST_ID = "SELECT max(id) FROM events"
# What an import adds to the events table, for the daemon's counts (outbox_changes).
RECORD_ADDED = "UPDATE outbox_changes SET events = events + ?, bytes = bytes + ?"

# -- the migration ledger

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""
APPLIED_VERSIONS = "SELECT version FROM schema_migrations ORDER BY version"
NEWEST_APPLIED = "SELECT coalesce(max(version), 0) AS version FROM schema_migrations"
LEDGER_COLUMNS = "PRAGMA table_info(schema_migrations)"

# -- the file itself

TABLES = "SELECT name FROM sqlite_master WHERE type='table'"
APPLICATION_ID = "PRAGMA application_id"
DATA_VERSION = "PRAGMA data_version"
WAL = "PRAGMA journal_mode = WAL"
QUICK_CHECK = "PRAGMA quick_check"
INTEGRITY_CHECK = "PRAGMA integrity_check"


def migration_script(sql: str, version: int, name: str, applied_at: str) -> str:
    """A migration and its row in the ledger, as one transaction."""
    return (
        f"BEGIN;\n{sql}\n;"
        "INSERT INTO schema_migrations (version, name, applied_at) "
        f"VALUES ({version}, '{name}', '{applied_at}');\nCOMMIT;"
    )


def keys_seen(count: int) -> str:
    """The stored ones among ``count`` webhook keys (digests, as parameters): one statement,
    a primary-key lookup each."""
    return f"SELECT key FROM webhook_keys WHERE key IN ({', '.join('?' * count)})"


def busy_timeout(seconds: float) -> str:
    return f"PRAGMA busy_timeout = {int(seconds * 1000)}"


def synchronous(level: str) -> str:
    return f"PRAGMA synchronous = {level}"


def stamp(application_id: int) -> str:
    return f"PRAGMA application_id = {application_id}"


def json_ids(ids: Iterable[int]) -> str:
    """Ids as one JSON array, the form every statement here takes them in."""
    return "[" + ",".join(str(i) for i in ids) + "]"


T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class Result:
    """The rows of a statement and the names of their columns, as SQLite gave them."""

    columns: tuple[str, ...]
    rows: list[Any]  # tuples: the store's connections set no row factory

    def objects(self, cls: type[T]) -> list[T]:
        """The rows as ``cls`` (a dataclass), each field taken from the column of its name."""
        pick = self._picker([field.name for field in dataclasses.fields(cls)])
        return [cls(*pick(row)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """The values of one column, row by row."""
        return list(map(itemgetter(self.columns.index(name)), self.rows))

    def first(self, name: str) -> Any:
        """The value of one column in the first row; None if there is no row."""
        return self.rows[0][self.columns.index(name)] if self.rows else None

    def _picker(self, names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
        # The names are looked up once per result, then a C-level pick per row: the hot path
        # reads a thousand rows per batch, and a sqlite3.Row per row adds about 15% to it.
        get = itemgetter(*(self.columns.index(name) for name in names))
        if len(names) == 1:
            return lambda row: (get(row),)
        return get


# The column names of each statement's result, as SQLite first gave them: a statement's
# names never change, and reading them again would cost two more round trips to the
# connection's thread on every read.
_COLUMNS: dict[str, tuple[str, ...]] = {}


async def fetch(conn: aiosqlite.Connection, query: str, params: Sequence[Any] = ()) -> Result:
    """Run ``query`` and read all its rows, with their column names."""
    columns = _COLUMNS.get(query)
    if columns is not None:
        return Result(columns, list(await conn.execute_fetchall(query, params)))
    async with conn.execute(query, params) as cursor:
        rows = list(await cursor.fetchall())
        columns = _COLUMNS[query] = tuple(d[0] for d in cursor.description)
    return Result(columns, rows)


R = TypeVar("R")


async def on_thread(conn: aiosqlite.Connection, work: Callable[[sqlite3.Connection], R]) -> R:
    """Run ``work`` with the sqlite3 connection behind ``conn``, on that connection's thread.

    aiosqlite hands each statement to its thread and back, one wake-up of each side per
    call; a transaction of four statements is one hand-off this way. ``Connection._execute``
    is aiosqlite's own queue, behind all its methods (pinned in deploy/constraints.txt).
    """

    def run() -> R:
        return work(conn._conn)  # on the thread that owns it

    result: R = await conn._execute(run)  # type: ignore[no-untyped-call]
    return result


def fetch_now(conn: sqlite3.Connection, query: str, params: Sequence[Any] = ()) -> Result:
    """``fetch`` on a connection of the standard library, for code on a connection's thread."""
    cursor = conn.execute(query, params)
    try:
        return Result(tuple(d[0] for d in cursor.description), cursor.fetchall())
    finally:
        cursor.close()
