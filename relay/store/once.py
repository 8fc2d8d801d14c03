"""Webhook deduplication: keys committed in the transaction that stores what they made.

A webhook delivery is stored at most once (its delivery id's key), and so is each object
in each status it announces (a job that succeeded): the key of every item goes into
``webhook_keys`` with ``INSERT OR IGNORE`` in the writer's transaction, and an item whose
key was there already is left out. Keys and events commit together, so a crash can never
keep the one without the other: an event is neither lost (key stored, event not) nor
stored twice (event stored, key not). Keys are 16-byte digests of their text, so that a
million of them stay near 40 MB whatever the providers' ids look like.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from relay.store import queries

_DIGEST_BYTES = 16
# The dead-letter reason of a webhook's content that cannot become a valid event.
INVALID = "invalid"


def digest(key: str) -> bytes:
    """The stored form of a key's text."""
    return hashlib.blake2b(key.encode(), digest_size=_DIGEST_BYTES).digest()


@dataclass(frozen=True, slots=True)
class Keyed:
    """An event a webhook made, named by the key of its object in its status. With
    ``refused``, it goes to the dead letters (reason ``invalid``) with that detail."""

    key: str
    body: bytes
    end_at: float | None
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What one append stored: new events, new dead letters; ``duplicate`` when its
    delivery was stored before (nothing was stored again)."""

    events: int
    dead_letters: int = 0
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Once:
    """One webhook delivery as the writer stores it: the delivery's key and its items."""

    delivery: bytes
    items: tuple[tuple[bytes, Keyed], ...]

    @classmethod
    def of(cls, delivery: str, items: Sequence[Keyed]) -> Once:
        return cls(digest(delivery), tuple((digest(item.key), item) for item in items))

    def store(self, conn: sqlite3.Connection, now: float) -> tuple[list[queries.Row], Stored]:
        """Inside the writer's transaction: record the keys, dead-letter the new refused
        items, and give the new events' rows for the writer to append."""
        if _seen(conn, self.delivery, now):
            return [], Stored(0, duplicate=True)
        rows: list[queries.Row] = []
        dead = 0
        for key, item in self.items:
            if _seen(conn, key, now):
                continue
            row = (now, item.end_at, len(item.body), item.body)
            if item.refused is None:
                rows.append(row)
            else:
                _dead_letter(conn, row, item.refused, now)
                dead += 1
        return rows, Stored(len(rows), dead)


def _seen(conn: sqlite3.Connection, key: bytes, now: float) -> bool:
    """Record ``key``; True when it was recorded before."""
    return conn.execute(queries.ADD_KEY, (key, now)).rowcount == 0


def seen(conn: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
    """Which of ``keys`` (digests) are stored, in statements of at most
    ``queries.MAX_KEYS_PER_LOOKUP`` keys."""
    found: set[bytes] = set()
    step = queries.MAX_KEYS_PER_LOOKUP
    for start in range(0, len(keys), step):
        chunk = keys[start : start + step]
        found.update(key for (key,) in conn.execute(queries.keys_seen(len(chunk)), chunk))
    return found


def _dead_letter(conn: sqlite3.Connection, row: queries.Row, detail: str, now: float) -> None:
    """Store ``row`` as a dead letter through the events table, so that it has an event id
    like every other dead letter and is made by the one query that makes them."""
    event_id = conn.execute(queries.APPEND, row).lastrowid
    assert event_id is not None
    ids = queries.json_ids([event_id])
    conn.execute(queries.TO_DEAD_LETTERS, (INVALID, None, detail, 0, now, now, ids))
    # Its record in the history, if it is an event at all (the upkeep bounds the history).
    conn.execute(queries.HISTORY_OF_IDS, (now, "dead_lettered", INVALID, ids))
    conn.execute(queries.DELETE_EVENTS, (ids,))
