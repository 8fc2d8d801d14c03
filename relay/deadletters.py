"""The dead-letter table, for operators: list, replay (back to the outbox) and purge.

These run from the CLI, with or without the daemon: SQLite's locking (WAL, a busy
timeout) lets them write beside the daemon's writer, and the daemon recounts its outbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.outbox import DeadLetterReason, connect


@dataclass(frozen=True)
class DeadLetter:
    id: int
    event_id: int
    received_at: float
    reason: DeadLetterReason
    upstream_status: int | None
    detail: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    body: bytes

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, the event itself included as text."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "reason": self.reason,
            "upstream_status": self.upstream_status,
            "detail": self.detail,
            "attempts": self.attempts,
            "received_at": _iso(self.received_at),
            "first_failure_at": _iso(self.first_failure_at),
            "last_failure_at": _iso(self.last_failure_at),
            "event": self.body.decode("utf-8", errors="replace"),
        }


_COLUMNS = (
    "id, event_id, received_at, reason, upstream_status, detail, attempts, "
    "first_failure_at, last_failure_at, body"
)


async def list_dead_letters(path: Path, reason: str | None = None) -> list[DeadLetter]:
    """Every dead letter, oldest first, optionally of one reason."""
    conn = await connect(path)
    try:
        rows = await conn.execute_fetchall(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE ?1 IS NULL OR reason = ?1 ORDER BY id",
            (reason,),
        )
        return [DeadLetter(*row) for row in rows]
    finally:
        await conn.close()


async def replay(path: Path, reason: str | None = None, ids: list[int] | None = None) -> int:
    """Move dead letters (all, of one reason, or by id) back to the outbox; how many moved."""
    conn = await connect(path)
    selected = (
        "(?1 IS NULL OR reason = ?1) AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))"
    )
    params = (reason, None if ids is None else "[" + ",".join(map(str, ids)) + "]")
    try:
        await conn.execute("BEGIN IMMEDIATE")
        cursor = await conn.execute(
            "INSERT INTO events (received_at, end_at, size, body) "
            f"SELECT ?3, end_at, length(body), body FROM dead_letters WHERE {selected} ORDER BY id",
            (*params, time.time()),
        )
        moved = cursor.rowcount
        await conn.execute(f"DELETE FROM dead_letters WHERE {selected}", params)
        await conn.commit()
        return moved
    finally:
        await conn.close()


async def purge(path: Path, older_than_s: float | None = None) -> int:
    """Delete dead letters (all, or those whose last failure is older than given); how many."""
    cutoff = None if older_than_s is None else time.time() - older_than_s
    conn = await connect(path)
    try:
        cursor = await conn.execute(
            "DELETE FROM dead_letters WHERE ?1 IS NULL OR last_failure_at < ?1", (cutoff,)
        )
        await conn.commit()
        return cursor.rowcount
    finally:
        await conn.close()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
