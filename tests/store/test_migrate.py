"""Schema migrations: the shipped SQL files, the ledger, and refusing a newer schema."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import aiosqlite
import pytest

import relay.store.migrate
from relay.store import queries
from relay.store.migrate import SchemaTooNew, available, migrate
from relay.testing.process import write_config
from tests.helpers import ci_relay

EXPECTED_COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "events": [
        ("id", "INTEGER", 0),
        ("received_at", "REAL", 1),
        ("end_at", "REAL", 0),
        ("size", "INTEGER", 1),
        ("attempts", "INTEGER", 1),
        ("first_failure_at", "REAL", 0),
        ("body", "BLOB", 1),
    ],
    "dead_letters": [
        ("id", "INTEGER", 0),
        ("event_id", "INTEGER", 1),
        ("received_at", "REAL", 1),
        ("reason", "TEXT", 1),
        ("upstream_status", "INTEGER", 0),
        ("detail", "TEXT", 1),
        ("attempts", "INTEGER", 1),
        ("first_failure_at", "REAL", 1),
        ("last_failure_at", "REAL", 1),
        ("end_at", "REAL", 0),
        ("body", "BLOB", 1),
    ],
    "outbox_changes": [
        ("id", "INTEGER", 0),
        ("events", "INTEGER", 1),
        ("bytes", "INTEGER", 1),
    ],
    "outbox_totals": [
        ("id", "INTEGER", 0),
        ("events", "INTEGER", 1),
        ("bytes", "INTEGER", 1),
    ],
    "history": [
        ("seq", "INTEGER", 0),
        ("received_at", "REAL", 1),
        ("recorded_at", "REAL", 1),
        ("fate", "TEXT", 1),
        ("reason", "TEXT", 0),
        ("end_at", "REAL", 0),
        ("body", "BLOB", 0),
        ("pipeline_id", "TEXT", 0),
        ("fields", "TEXT", 0),
    ],
    "webhook_keys": [
        ("key", "BLOB", 1),
        ("seen_at", "REAL", 1),
    ],
    "schema_migrations": [
        ("version", "INTEGER", 0),
        ("name", "TEXT", 1),
        ("applied_at", "TEXT", 1),
    ],
}


def shipped_files() -> list[tuple[int, str]]:
    """(version, name) of each NNNN_name.sql file of the installed relay.migrations package."""
    found = []
    for entry in resources.files("relay.migrations").iterdir():
        if match := re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name):
            found.append((int(match[1]), match[2]))
    return sorted(found)


@pytest.fixture
async def conn(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await aiosqlite.connect(tmp_path / "outbox.db")
    yield connection
    await connection.close()


async def ledger(conn: aiosqlite.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.execute_fetchall(
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def test_migrations_on_empty_file_give_expected_schema(conn: aiosqlite.Connection) -> None:
    """Replaying every migration on an empty file creates exactly the expected tables."""
    await migrate(conn, "outbox.db")
    tables = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
        "ORDER BY name"
    )
    assert sorted(EXPECTED_COLUMNS) == [row[0] for row in tables]
    for table, expected in EXPECTED_COLUMNS.items():
        info = await conn.execute_fetchall(f"PRAGMA table_info({table})")
        assert expected == [(row[1], row[2], row[3]) for row in info], table


async def test_ledger_has_a_row_per_migration_file(conn: aiosqlite.Connection) -> None:
    """After migrating, schema_migrations holds one row per shipped migration file."""
    applied = await migrate(conn, "outbox.db")
    expected = shipped_files()
    assert expected == [(m.version, m.name) for m in applied]
    assert expected == [(version, name) for version, name, _ in await ledger(conn)]


async def test_second_migrate_applies_nothing(conn: aiosqlite.Connection) -> None:
    """Running migrate on an up-to-date database applies nothing and leaves the ledger alone."""
    await migrate(conn, "outbox.db")
    before = await ledger(conn)
    assert [] == await migrate(conn, "outbox.db")
    assert before == await ledger(conn)


def _write_future_schema(path: Path) -> int:
    """A database whose ledger holds a version newer than the newest shipped; that version."""
    future = shipped_files()[-1][0] + 1
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from_the_future', '2099-01-01')", (future,)
        )
    db.close()
    return future


async def test_newer_schema_raises_schema_too_new(tmp_path: Path) -> None:
    """A ledger with a version newer than any shipped file raises SchemaTooNew, explained."""
    path = tmp_path / "outbox.db"
    future = _write_future_schema(path)
    newest = shipped_files()[-1][0]
    async with aiosqlite.connect(path) as connection:
        with pytest.raises(SchemaTooNew) as raised:
            await migrate(connection, str(path))
        tables = await connection.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    message = str(raised.value)
    expected = (True, True, True, True)
    assert expected == (
        str(path) in message,
        f"schema version {future}" in message,
        f"knows up to {newest}" in message,
        "newer ci-relay" in message,
    ), message
    assert ["schema_migrations"] == [row[0] for row in tables]


async def test_serve_on_newer_schema_exits_2(tmp_path: Path) -> None:
    """`ci-relay serve` on an outbox with a newer schema exits 2 with SchemaTooNew on stderr."""
    path = tmp_path / "outbox.db"
    _write_future_schema(path)
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(path)})
    try:
        result = await ci_relay("serve", "--config", str(config), timeout_s=10)
    except TimeoutError as exc:
        pytest.fail(f"ci-relay serve did not exit within 10 s; {exc}")
    lines = result.stderr.splitlines()
    assert (2, 1) == (result.status, len(lines)), result.stderr
    assert "newer ci-relay" in lines[0]
    assert str(path) in lines[0]


def test_available_matches_the_shipped_package() -> None:
    """available() returns the SQL files of the installed relay.migrations package, in order."""
    migrations = available()
    assert shipped_files() == [(m.version, m.name) for m in migrations]
    assert all(m.sql.strip() for m in migrations)


def test_migrations_are_found_through_importlib_resources_and_ordered_by_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """available() lists the package through importlib.resources and sorts by version number."""
    for name in ("0010_ten.sql", "0002_two.sql", "0009_nine.sql", "0001_one.sql"):
        (tmp_path / name).write_text(f"-- {name}\n", encoding="utf-8")
    (tmp_path / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "notes.sql.txt").write_text("", encoding="utf-8")
    asked: list[str] = []

    def files(package: str) -> Path:
        asked.append(package)
        return tmp_path

    monkeypatch.setattr(relay.store.migrate, "resources", SimpleNamespace(files=files))
    found = [(m.version, m.name, m.sql) for m in available()]
    assert ["relay.migrations"] == asked
    assert [
        (1, "one", "-- 0001_one.sql\n"),
        (2, "two", "-- 0002_two.sql\n"),
        (9, "nine", "-- 0009_nine.sql\n"),
        (10, "ten", "-- 0010_ten.sql\n"),
    ] == found


async def test_dead_letters_keep_their_rows_and_never_reuse_an_id(tmp_path: Path) -> None:
    """Migration 3 keeps existing dead letters, takes 'upstream_error', and never reuses an id."""
    path = tmp_path / "outbox.db"
    row = "(1, 0, 'rejected', 400, 'bad', 1, 0, 0, NULL, x'7b7d')"
    columns = (
        "event_id, received_at, reason, upstream_status, detail, attempts, "
        "first_failure_at, last_failure_at, end_at, body"
    )
    async with aiosqlite.connect(path) as connection:
        for migration in available()[:2]:
            await connection.executescript(migration.sql)
        await connection.execute(f"INSERT INTO dead_letters ({columns}) VALUES {row}")
        await connection.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        await connection.execute(
            "INSERT INTO schema_migrations VALUES (1, 'outbox', ''), (2, 'dead_letters', '')"
        )
        await connection.commit()
        await migrate(connection, str(path))
        kept = await connection.execute_fetchall("SELECT id, reason, detail FROM dead_letters")
        await connection.execute("DELETE FROM dead_letters")
        await connection.execute(
            f"INSERT INTO dead_letters ({columns}) VALUES "
            "(2, 0, 'upstream_error', 503, 'down', 10, 0, 0, NULL, x'7b7d')"
        )
        ids = await connection.execute_fetchall("SELECT id, reason FROM dead_letters")
    assert [(1, "rejected", "bad")] == [tuple(r) for r in kept]
    assert [(2, "upstream_error")] == [tuple(r) for r in ids]


async def test_webhook_migration_keeps_dead_letters_and_their_id_sequence(tmp_path: Path) -> None:
    """Migration 8 rebuilds dead_letters to take 'invalid': rows kept, and an id freed by a
    purge before it is not given again after it."""
    path = tmp_path / "outbox.db"
    columns = (
        "event_id, received_at, reason, upstream_status, detail, attempts, "
        "first_failure_at, last_failure_at, end_at, body"
    )
    async with aiosqlite.connect(path) as connection:
        await connection.execute(queries.CREATE_LEDGER)
        for migration in available()[:7]:
            await connection.executescript(
                queries.migration_script(migration.sql, migration.version, migration.name, "")
            )
        for detail in ("kept", "purged"):
            await connection.execute(
                f"INSERT INTO dead_letters ({columns}) "
                f"VALUES (1, 0, 'expired', NULL, '{detail}', 0, 0, 0, NULL, x'7b7d')"
            )
        await connection.execute("DELETE FROM dead_letters WHERE detail = 'purged'")
        await connection.commit()
        await migrate(connection, str(path))
        await connection.execute(
            f"INSERT INTO dead_letters ({columns}) "
            "VALUES (3, 0, 'invalid', NULL, 'webhook', 0, 0, 0, NULL, x'7b7d')"
        )
        rows = await connection.execute_fetchall("SELECT id, reason, detail FROM dead_letters")
    assert [(1, "expired", "kept"), (3, "invalid", "webhook")] == [tuple(r) for r in rows]
