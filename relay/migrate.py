"""Schema migrations: the ordered ``NNNN_name.sql`` files of ``relay.migrations``.

Each file is applied once, in its own transaction together with its row in
``schema_migrations``, so a crash mid-migration leaves the previous schema intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import aiosqlite

from relay.outbox_file import OutboxError

_NAME = re.compile(r"(\d{4})_(\w+)\.sql")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class SchemaTooNew(OutboxError):
    """The database was written by a newer ci-relay; this one must not touch it."""


def available() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    found = []
    for entry in resources.files("relay.migrations").iterdir():
        if match := _NAME.fullmatch(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def applied_versions(conn: aiosqlite.Connection) -> list[int]:
    await conn.execute(_CREATE_LEDGER)
    await conn.commit()
    rows = await conn.execute_fetchall("SELECT version FROM schema_migrations ORDER BY version")
    return [row[0] for row in rows]


async def migrate(conn: aiosqlite.Connection, path: str) -> list[Migration]:
    """Apply the migrations ``conn`` lacks; the ones applied, or SchemaTooNew."""
    known = available()
    done = set(await applied_versions(conn))
    newest_known = known[-1].version if known else 0
    if done and max(done) > newest_known:
        raise SchemaTooNew(
            f"outbox {path} has schema version {max(done)}, written by a newer ci-relay; "
            f"this version knows up to {newest_known}. Upgrade ci-relay or use another outbox.path."
        )
    applied = []
    for migration in known:
        if migration.version in done:
            continue
        stamp = datetime.now(UTC).isoformat()
        await conn.executescript(
            f"BEGIN;\n{migration.sql}\n;"
            "INSERT INTO schema_migrations (version, name, applied_at) "
            f"VALUES ({migration.version}, '{migration.name}', '{stamp}');\nCOMMIT;"
        )
        applied.append(migration)
    return applied
