"""``ci-relay outbox import``: the events of a moved-aside outbox delivered, once.

Real relays run as subprocesses, delivering to the fake intake; the damaged outbox is a real
one with pages overwritten, refused at start and moved aside with ``outbox move-aside``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import FakeIntake
from tests.helpers import API_KEY, JSON, ci_relay, event_id

EVENTS = 200
PER_REQUEST = 20
PAGE = 4096
DAMAGED_PAGES = 2  # in the middle of the file, where events lie (about one per page)
TIMEOUT_S = 30.0


def sample(n: int) -> dict[str, Any]:
    """A job event of about 2 KB: the events table spans a hundred pages or so."""
    return event(
        "job", id=f"salvage-{n:04d}", name=f"salvage-{n:04d}", parameters={"p": "x" * 2000}
    )


async def fill_and_stop(config: Path, crash: bool = False) -> dict[str, dict[str, Any]]:
    """Post EVENTS events to a relay that has no API key (it keeps them all), then stop it
    cleanly (with ``crash``, SIGKILL: the events stay in the -wal); the events sent, by id."""
    sent: dict[str, dict[str, Any]] = {}
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        for first in range(0, EVENTS, PER_REQUEST):
            items = [sample(n) for n in range(first, first + PER_REQUEST)]
            body = orjson.dumps(request(*items))
            async with client.post(relay.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
            sent |= {event_id(item): item for item in items}
        assert (-9 if crash else 0) == await (relay.kill() if crash else relay.terminate())
    return sent


def damage_the_middle(outbox: Path) -> None:
    """Overwrite DAMAGED_PAGES pages in the middle of the file, as a bad sector would."""
    with open(outbox, "r+b") as file:
        pages = file.seek(0, 2) // PAGE
        file.seek(pages // 2 * PAGE)
        file.write(b"\xa5" * PAGE * DAMAGED_PAGES)


def moved_aside(directory: Path) -> Path:
    """The one file ``outbox move-aside`` made in ``directory``."""
    (aside,) = [p for p in directory.iterdir() if ".damaged-" in p.name]
    return aside


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pending(outbox: Path) -> int:
    """The events in the outbox, read beside the running relay."""
    with closing(sqlite3.connect(outbox, timeout=10)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(count)


async def test_import_delivers_what_a_damaged_outbox_still_holds_and_only_once(
    tmp_path: Path,
) -> None:
    """A damaged outbox moved aside: ``outbox import``, beside the relay serving the new
    outbox, appends every event still readable, which the relay delivers exactly as posted,
    and says how many were lost (exit 1); the file is left unchanged, and a second run does
    nothing, so no event is delivered twice."""
    outbox = tmp_path / "outbox.db"
    keeping = write_config(tmp_path / "keep.toml", server={"port": 0}, outbox={"path": str(outbox)})
    sent = await fill_and_stop(keeping)
    damage_the_middle(outbox)
    refused = await ci_relay("serve", "--config", str(keeping))
    moved = await ci_relay("outbox", "move-aside", "--config", str(keeping))
    assert (2, 0) == (refused.status, moved.status), refused.stderr + moved.stderr
    assert "is damaged" in refused.stderr
    aside = moved_aside(tmp_path)
    assert f"deliver its events with: ci-relay outbox import {aside}" in moved.stdout
    before = digest(aside)

    async with FakeIntake() as intake:
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(outbox)},
            upstream={"url": intake.url, "api_key": API_KEY},
            flusher={"flush_interval_s": 0.05},
        )
        async with RelayProcess(config) as relay:
            first = await ci_relay("outbox", "import", str(aside), "--config", str(config))
            imported = int(first.stdout.split()[1])
            await intake.wait_for_events(imported, TIMEOUT_S)
            second = await ci_relay("outbox", "import", str(aside), "--config", str(config))
            left_after_second = pending(outbox)
            assert 0 == await relay.terminate()

    lost = EVENTS - imported
    assert 0 < lost <= 2 * DAMAGED_PAGES, first.stdout
    assert (1, "") == (first.status, first.stderr)
    assert [
        f"imported {imported} event(s) from {aside} into {outbox}",
        f"lost {lost} of the file's {EVENTS} pending event(s)",
        "SQLite could not read part of the file: database disk image is malformed",
    ] == first.stdout.splitlines()
    assert (0, [
        f"{aside} was imported already ({imported} event(s)); nothing done: importing it "
        f"again would deliver its events twice (delete {aside}.import to do so all the same)"
    ]) == (second.status, second.stdout.splitlines())  # fmt: skip
    delivered = {event_id(e): e for e in intake.accepted_events}
    assert (imported, imported, 0) == (
        len(intake.accepted_events),
        len(delivered),
        left_after_second,
    )
    assert {key: sent[key] for key in delivered} == delivered
    assert before == digest(aside)


async def test_import_into_a_stopped_relay_recovers_every_event_of_a_sound_file(
    tmp_path: Path,
) -> None:
    """A sound outbox (its events in the -wal of a killed relay) moved aside: import refuses
    before the relay has made a new outbox, then, the relay stopped, imports every event
    with the time it was received (exit 0), the next start counts them pending, and the
    progress file is its owner's only."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    await fill_and_stop(config, crash=True)
    with closing(sqlite3.connect(outbox)) as conn:
        received = conn.execute("SELECT received_at, body FROM events ORDER BY id").fetchall()
    moved = await ci_relay("outbox", "move-aside", "--config", str(config))
    aside = moved_aside(tmp_path)
    too_soon = await ci_relay("outbox", "import", str(aside), "--config", str(config))
    async with RelayProcess(config) as relay:
        assert 0 == await relay.terminate()

    ran = await ci_relay("outbox", "import", str(aside), "--config", str(config))

    assert (0, 2, 0, [f"imported {EVENTS} event(s) from {aside} into {outbox}"]) == (
        moved.status,
        too_soon.status,
        ran.status,
        ran.stdout.splitlines(),
    )
    assert [
        f"ci-relay: no outbox at {outbox}: start the relay once with this configuration "
        "(it creates the outbox), then import"
    ] == too_soon.stderr.splitlines()
    with closing(sqlite3.connect(outbox)) as conn:
        assert (
            received == conn.execute("SELECT received_at, body FROM events ORDER BY id").fetchall()
        )
    async with RelayProcess(config) as relay:
        assert 0 == await relay.terminate()
    (opened,) = relay.events("outbox opened")
    assert (EVENTS, 0o600) == (
        opened["pending_events"],
        mode(aside.with_name(aside.name + ".import")),
    )


async def test_interrupted_import_goes_on_after_the_last_event_it_recorded(
    tmp_path: Path,
) -> None:
    """An import whose progress file records half the events done (a run interrupted there)
    imports the other half only, and says how many the earlier run did."""
    outbox = tmp_path / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    await fill_and_stop(config)
    with closing(sqlite3.connect(outbox)) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]
        later = conn.execute(
            "SELECT body FROM events WHERE id > ? ORDER BY id", (ids[EVENTS // 2 - 1],)
        ).fetchall()
    await ci_relay("outbox", "move-aside", "--config", str(config))
    aside = moved_aside(tmp_path)
    progress = {"last_id": ids[EVENTS // 2 - 1], "imported": EVENTS // 2, "not_json": 0}
    aside.with_name(aside.name + ".import").write_bytes(
        orjson.dumps(progress | {"finished": False})
    )
    async with RelayProcess(config) as relay:
        assert 0 == await relay.terminate()

    ran = await ci_relay("outbox", "import", str(aside), "--config", str(config))

    half = EVENTS // 2
    assert (
        0,
        [f"imported {half} event(s) from {aside} into {outbox} ({half} more by an earlier run)"],
    ) == (
        ran.status,
        ran.stdout.splitlines(),
    )
    with closing(sqlite3.connect(outbox)) as conn:
        assert later == conn.execute("SELECT body FROM events ORDER BY id").fetchall()
