"""The dead-letter table, for operators: list, replay (back to the outbox) and purge.

These run from the CLI, with or without the daemon. Listing opens the file read-only.
Replay and purge write in short transactions of a few hundred rows and pause between
them, so that the daemon's writer, which shares SQLite's single write lock, never waits
long for it: runners keep getting 202 while millions of dead letters move.

A dead letter is named by the id its event had in the outbox, the id the daemon's log
lines give; outbox ids are never reused, so it names one dead letter for good.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson

from relay.contract.exceptions import UserError
from relay.store import outbox_file, queries
from relay.store.opening import BUSY_TIMEOUT_S, connect
from relay.store.outbox import DeadLetterReason

# A write transaction of replay or purge aims to hold the lock about this long, and the
# command then pauses at least as long: the daemon's writer waits about 100 ms at most.
TARGET_HOLD_S = 0.04
_FIRST_CHUNK_ROWS = 250
_MAX_CHUNK_ROWS = 20_000

Progress = Callable[[int, int], None]
Verb = Literal["replay", "purge"]


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on: those matching every filter given (with none,
    every dead letter)."""

    reason: DeadLetterReason | None = None
    ids: list[int] | None = None
    older_than_s: float | None = None

    @property
    def filtered(self) -> bool:
        """True when a filter narrows it."""
        return self.reason is not None or self.ids is not None or self.older_than_s is not None

    def params(self, now: float) -> tuple[Any, ...]:
        """The parameters of ``queries.SELECTED`` (?1 to ?3)."""
        ids = None if self.ids is None else queries.json_ids(self.ids)
        cutoff = None if self.older_than_s is None else now - self.older_than_s
        return self.reason, ids, cutoff


def chosen(verb: Verb, selection: Selection, every: bool) -> Selection:
    """``selection`` for a replay or purge, which names its dead letters by filters or, to
    act on every one, says so (``every``, the command's --all), never both nor neither:
    UserError otherwise."""
    if selection.filtered == every:
        which = "--reason, --id" + (" or --older-than" if verb == "purge" else "")
        raise UserError(
            f"dead-letters {verb}: choose dead letters with {which}, "
            "or say --all for every one, not both"
        )
    return selection


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: float
    reason: DeadLetterReason
    upstream_status: int | None
    detail: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    body: bytes

    def resource(self) -> dict[str, Any]:
        """The event's resource (level, name, pipeline...); {} if the body is not an event."""
        try:
            event = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            # orjson refuses integers beyond 64 bits, which the relay keeps exactly.
            try:
                event = json.loads(self.body)
            except ValueError:
                return {}
        found = event.get("attributes", {}).get("resource") if isinstance(event, dict) else None
        return found if isinstance(found, dict) else {}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view; ``event`` is the stored JSON itself, embedded as it is."""
        resource = self.resource()
        return {
            "id": self.id,
            "reason": self.reason,
            "upstream_status": self.upstream_status,
            "detail": self.detail,
            "attempts": self.attempts,
            "received_at": _iso(self.received_at),
            "first_failure_at": _iso(self.first_failure_at),
            "last_failure_at": _iso(self.last_failure_at),
            "level": resource.get("level"),
            "name": resource.get("name"),
            "pipeline": pipeline_name(resource),
            "event": orjson.Fragment(self.body),
        }

    def line(self) -> str:
        """One line of ``dead-letters list``: what failed, when, how often, and which event."""
        row = self.as_dict()
        return (
            f"{row['id']:>6}  {row['reason']:<14}  {row['upstream_status'] or '-':>3}  "
            f"{row['last_failure_at']}  attempts={row['attempts']}  level={_quoted(row['level'])}  "
            f"name={_quoted(row['name'])}  pipeline={_quoted(row['pipeline'])}  {row['detail']}"
        )


def pipeline_name(resource: dict[str, Any]) -> str | None:
    """The pipeline an event belongs to: its own name for a pipeline, else its parent's."""
    if resource.get("level") == "pipeline":
        return _text(resource.get("name"))
    return _text(resource.get("pipeline_name"))


async def list_dead_letters(path: Path, reason: DeadLetterReason | None = None) -> list[DeadLetter]:
    """Every dead letter, oldest first, optionally of one reason; the file is opened read-only."""
    conn = await open_read_only(path)
    try:
        found = await queries.fetch(conn, queries.DEAD_LETTERS_OF_REASON, (reason,))
        return found.objects(DeadLetter)
    finally:
        await conn.close()


async def open_read_only(path: Path) -> aiosqlite.Connection:
    """A read-only connection to an existing outbox (OutboxMissing, OutboxError otherwise)."""
    await asyncio.to_thread(outbox_file.inspect, path, None)
    conn = await aiosqlite.connect(outbox_file.read_only_uri(path), uri=True)
    await conn.execute(queries.busy_timeout(BUSY_TIMEOUT_S))
    return conn


async def missing_ids(path: Path, ids: list[int]) -> list[int]:
    """Those of ``ids`` that name no dead letter."""
    conn = await open_read_only(path)
    try:
        rows = await conn.execute_fetchall(
            queries.UNKNOWN_DEAD_LETTER_IDS, (queries.json_ids(ids),)
        )
        return [int(event_id) for (event_id,) in rows]
    finally:
        await conn.close()


async def count(path: Path, selection: Selection) -> int:
    """How many dead letters ``selection`` names (what a dry run reports)."""
    conn = await open_read_only(path)
    try:
        return await _count_selected(conn, selection.params(time.time()))
    finally:
        await conn.close()


@dataclass(frozen=True)
class Done:
    """What a replay or purge did: how many dead letters it moved or deleted, and the ids
    it was given that name no dead letter."""

    count: int
    missing: list[int]


async def act(
    verb: Verb, path: Path, selection: Selection, progress: Progress | None = None
) -> Done:
    """Replay or purge the selected dead letters (``replay``, ``purge``)."""
    # Looked up first: afterwards every id acted on would be missing too.
    missing = await missing_ids(path, selection.ids) if selection.ids else []
    action = replay if verb == "replay" else purge
    return Done(await action(path, selection, progress), missing)


async def replay(path: Path, selection: Selection, progress: Progress | None = None) -> int:
    """Move the selected dead letters back to the outbox, oldest first; how many moved."""
    now = time.time()

    async def move(conn: aiosqlite.Connection, ids: str) -> None:
        await conn.execute(queries.REPLAY_CHUNK, (now, ids))
        # Tells a running daemon what it gained, so it need not recount the whole table.
        await conn.execute(queries.RECORD_REPLAYED, (ids,))
        await conn.execute(queries.DELETE_CHUNK, (ids,))

    return await _in_chunks(path, selection, now, move, progress)


async def purge(path: Path, selection: Selection, progress: Progress | None = None) -> int:
    """Delete the selected dead letters; how many."""

    async def delete(conn: aiosqlite.Connection, ids: str) -> None:
        await conn.execute(queries.DELETE_CHUNK, (ids,))

    return await _in_chunks(path, selection, time.time(), delete, progress)


async def _in_chunks(
    path: Path,
    selection: Selection,
    now: float,
    act: Callable[[aiosqlite.Connection, str], Awaitable[None]],
    progress: Progress | None,
) -> int:
    """Run ``act`` on the selected rows, a chunk per short write transaction."""
    conn = await connect(path, create=False)
    try:
        params = selection.params(now)
        total = await _count_selected(conn, params)
        done, after, rows = 0, 0, _FIRST_CHUNK_ROWS
        while True:
            started = time.monotonic()
            await conn.execute(queries.BEGIN_WRITE)
            found = await conn.execute_fetchall(queries.NEXT_CHUNK, (*params, after, rows))
            chunk = [int(letter) for (letter,) in found]
            if chunk:
                await act(conn, queries.json_ids(chunk))
            await conn.commit()
            if not chunk:
                return done
            held = time.monotonic() - started
            done, after = done + len(chunk), chunk[-1]
            if progress is not None:
                progress(done, max(total, done))
            rows = _next_chunk_rows(rows, held)
            # Leave the lock free at least as long as it was held: the daemon's writer polls
            # for it and must find it free within a poll or two.
            await asyncio.sleep(max(held, TARGET_HOLD_S))
    finally:
        await conn.close()


async def _count_selected(conn: aiosqlite.Connection, params: tuple[Any, ...]) -> int:
    ((selected,),) = await conn.execute_fetchall(queries.COUNT_SELECTED, params)
    return int(selected)


def _next_chunk_rows(rows: int, held_s: float) -> int:
    if held_s < TARGET_HOLD_S / 2:
        return min(_MAX_CHUNK_ROWS, rows * 2)
    if held_s > TARGET_HOLD_S:
        return max(1, rows // 2)
    return rows


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _quoted(value: str | None) -> str:
    return "-" if value is None else orjson.dumps(value).decode()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
