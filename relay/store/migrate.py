"""Schema migrations: the ordered ``NNNN_name.sql`` files of ``migrations/``.

Each file is applied once, in its own transaction together with its row in
``schema_migrations``, so a crash mid-migration leaves the previous schema intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import aiosqlite

from relay.store import queries
from relay.store.outbox_file import OutboxError

# The top-level migrations/ folder: pyproject.toml installs it as this package (package-dir
# and package-data), so a non-editable install such as the Docker image finds the SQL files.
MIGRATIONS_PACKAGE = "relay.migrations"

_NAME = re.compile(r"(\d{4})_(\w+)\.sql")


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
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if match := _NAME.fullmatch(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def applied_versions(conn: aiosqlite.Connection) -> list[int]:
    await conn.execute(queries.CREATE_LEDGER)
    await conn.commit()
    rows = await conn.execute_fetchall(queries.APPLIED_VERSIONS)
    return [version for (version,) in rows]


def refuse_newer(version: int, path: str) -> None:
    """SchemaTooNew if schema ``version`` is newer than any migration this version ships."""
    known = available()
    newest_known = known[-1].version if known else 0
    if version > newest_known:
        raise SchemaTooNew(
            f"outbox {path} has schema version {version}, written by a newer ci-relay; "
            f"this version knows up to {newest_known}. Upgrade ci-relay or use another outbox.path."
        )


async def migrate(conn: aiosqlite.Connection, path: str) -> list[Migration]:
    """Apply the migrations ``conn`` lacks; the ones applied, or SchemaTooNew."""
    known = available()
    done = set(await applied_versions(conn))
    refuse_newer(max(done, default=0), path)
    applied = []
    for migration in known:
        if migration.version in done:
            continue
        stamp = datetime.now(UTC).isoformat()
        await conn.executescript(
            queries.migration_script(migration.sql, migration.version, migration.name, stamp)
        )
        applied.append(migration)
    return applied
