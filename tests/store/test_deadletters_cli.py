"""``ci-relay dead-letters`` list, replay and purge, on dead letters made by the real flusher."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from relay.config import FlusherSettings, OutboxSettings, RetrySettings, UpstreamSettings
from relay.contract.schema import parse_request
from relay.delivery.flusher import Flusher
from relay.delivery.upstream import Upstream
from relay.store.outbox import Outbox
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import Accept, Answer, FakeIntake, RejectEvents, TooLarge
from tests.helpers import Ran, ci_relay

API_KEY = "0123456789abcdef0123456789abcdef"
HOUR_S = 3600.0

# The events the intake refuses, by resource id.
BAD = frozenset({"old-bad", "bad-1", "bad-2"})
# Every dead letter the fixture makes: its event's id -> (reason, upstream status).
EXPECTED: dict[str, tuple[str, int | None]] = {
    "old-bad": ("rejected", 400),
    "bad-1": ("rejected", 400),
    "bad-2": ("rejected", 400),
    "big": ("too_large", 413),
    "late": ("expired", None),
}
# Events the intake takes: delivered on the way, never dead-lettered.
GOOD = frozenset({"good-a", "good-b", "good-c", "good-d", "small"})
TOO_LARGE_BYTES = 10_000


def event_id(sent: dict[str, Any]) -> str:
    """The resource id a test gave an event."""
    return str(sent["attributes"]["resource"]["id"])


def is_bad(sent: dict[str, Any]) -> bool:
    """The intake's rule for the events it rejects."""
    return event_id(sent) in BAD


@dataclass(frozen=True)
class DeadLetters:
    """An outbox holding the dead letters of ``EXPECTED``, and the events as they were sent."""

    config: Path
    db: Path
    sent: dict[str, dict[str, Any]]
    built_from: float
    built_to: float


async def drain(outbox: Outbox, flusher: Flusher) -> None:
    """Flush until the outbox is empty; every step must finish its batch."""
    for _ in range(50):
        if outbox.counts.events == 0:
            return
        result = await flusher.flush_once()
        assert result.blocked_by is None, result
    raise AssertionError(f"{outbox.counts.events} events still in the outbox after 50 flushes")


@pytest.fixture
async def dead(tmp_path: Path) -> DeadLetters:
    """Dead letters made by Outbox, Upstream and Flusher against a fake intake.

    Rejected (400) twice, one of them with a flusher clock two hours behind so it is old;
    too large (413) for one big event; expired with a flusher clock 19 hours ahead.
    """
    db = tmp_path / "outbox.db"
    sent: dict[str, dict[str, Any]] = {}
    built_from = time.time()
    async with FakeIntake() as intake:
        outbox = await Outbox.open(OutboxSettings(path=db))
        upstream = Upstream(UpstreamSettings(url=intake.url, api_key=SecretStr(API_KEY)))

        async def phase(answer: Answer, clock: Callable[[], float], *ids: str) -> None:
            intake.default = answer
            events = [
                event("job", id=i, name="x" * (2 * TOO_LARGE_BYTES) if i == "big" else "compile")
                for i in ids
            ]
            sent.update((event_id(e), e) for e in events)
            await outbox.append(parse_request(orjson.dumps(request(*events))))
            flusher = Flusher(outbox, upstream, FlusherSettings(), RetrySettings(), clock=clock)
            await drain(outbox, flusher)

        try:
            rejecting = RejectEvents(is_bad)
            await phase(rejecting, lambda: time.time() - 2 * HOUR_S, "good-a", "old-bad", "good-b")
            await phase(rejecting, time.time, "good-c", "bad-1", "bad-2", "good-d")
            await phase(TooLarge(TOO_LARGE_BYTES), time.time, "small", "big")
            await phase(Accept(), lambda: time.time() + 19 * HOUR_S, "late")
        finally:
            await upstream.close()
            await outbox.close()
        assert GOOD == {event_id(e) for e in intake.accepted_events}
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(db)})
    return DeadLetters(config, db, sent, built_from, time.time())


async def cli(config: Path, *args: str) -> Ran:
    """Run ``ci-relay dead-letters ARGS --config CONFIG`` as a subprocess."""
    return await ci_relay("dead-letters", *args, "--config", str(config))


async def listed(dead: DeadLetters, *args: str) -> list[dict[str, Any]]:
    """``list --json ARGS``, one decoded object per line."""
    run = await cli(dead.config, "list", "--json", *args)
    assert (0, "") == (run.status, run.stderr)
    return [orjson.loads(line) for line in run.stdout.splitlines()]


def letter_event_id(letter: dict[str, Any]) -> str:
    """The id of the event a listed dead letter holds."""
    return event_id(letter["event"])


async def letter_id(dead: DeadLetters, of_event: str) -> int:
    """The dead-letter id of the event with resource id ``of_event``."""
    (found,) = [row["id"] for row in await listed(dead) if letter_event_id(row) == of_event]
    return int(found)


def outbox_bodies(db: Path) -> list[bytes]:
    """The bodies in the events table (the outbox proper), oldest first."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT body FROM events ORDER BY id")]


def epoch(iso: str) -> float:
    """Epoch seconds of an ISO 8601 time with its offset."""
    moment = datetime.fromisoformat(iso)
    assert moment.utcoffset() is not None, f"{iso} has no offset"
    return moment.timestamp()


async def test_list_prints_one_row_per_dead_letter_and_a_count(dead: DeadLetters) -> None:
    """``list`` prints a row per dead letter (id, reason, status, attempts) and a count."""
    run = await cli(dead.config, "list")

    assert 0 == run.status
    assert f"5 dead letter(s) in {dead.db}\n" == run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    by_id = {int(row[0]): (row[1], row[2]) for row in rows}
    assert 5 == len(rows) == len(by_id)
    expected = {
        await letter_id(dead, i): (reason, str(status or "-"))
        for i, (reason, status) in EXPECTED.items()
    }
    assert expected == by_id
    # One refused attempt each; the expired event was never sent.
    attempts = {row[0]: next(f for f in row if f.startswith("attempts=")) for row in rows}
    late = str(await letter_id(dead, "late"))
    assert {i: ("attempts=0" if i == late else "attempts=1") for i in attempts} == attempts


async def test_list_json_shows_every_field_and_the_original_event(dead: DeadLetters) -> None:
    """``list --json`` gives per dead letter its reason, status, detail, times and sent event."""
    letters = await listed(dead)

    assert sorted(EXPECTED) == sorted(letter_event_id(row) for row in letters)
    for row in letters:
        which = letter_event_id(row)
        assert {
            "id",
            "level",
            "name",
            "pipeline",
            "reason",
            "upstream_status",
            "detail",
            "attempts",
            "received_at",
            "first_failure_at",
            "last_failure_at",
            "event",
        } <= set(row)
        assert EXPECTED[which] == (row["reason"], row["upstream_status"])
        assert dead.sent[which] == row["event"]
        assert (0 if which == "late" else 1) == row["attempts"]
        first, last = epoch(row["first_failure_at"]), epoch(row["last_failure_at"])
        assert first == last, row
        # Each failure time is the flusher's clock: 2 h behind, real, or 19 h ahead.
        skew = {"old-bad": -2 * HOUR_S, "late": 19 * HOUR_S}.get(which, 0.0)
        assert dead.built_from + skew <= last <= dead.built_to + skew, row
        assert dead.built_from <= epoch(row["received_at"]) <= dead.built_to, row
    details = {letter_event_id(row): row["detail"] for row in letters}
    assert "invalid event: data[0] (id=old-bad)" == details["old-bad"]
    assert "invalid event: data[0] (id=bad-1)" == details["bad-1"]
    assert f"exceeds the limit of {TOO_LARGE_BYTES} bytes" in details["big"]
    assert "18 hours" in details["late"]


@pytest.mark.parametrize("reason", ["rejected", "too_large", "expired"])
async def test_list_reason_filters(dead: DeadLetters, reason: str) -> None:
    """``list --reason R`` shows only the dead letters of that reason."""
    letters = await listed(dead, "--reason", reason)

    expected = sorted(i for i, (why, _) in EXPECTED.items() if why == reason)
    assert expected == sorted(letter_event_id(row) for row in letters)
    assert {reason} == {row["reason"] for row in letters}


async def test_replay_by_id_moves_exactly_that_one_back_to_the_outbox(dead: DeadLetters) -> None:
    """``replay --id N`` moves dead letter N, and only it, into the events table."""
    target = await letter_id(dead, "bad-1")

    run = await cli(dead.config, "replay", "--id", str(target))

    assert (0, "replayed 1 dead letter(s) into the outbox\n") == (run.status, run.stdout)
    remaining = await listed(dead)
    assert sorted(set(EXPECTED) - {"bad-1"}) == sorted(letter_event_id(r) for r in remaining)
    assert target not in {row["id"] for row in remaining}
    assert [orjson.dumps(dead.sent["bad-1"])] == outbox_bodies(dead.db)


async def test_replay_by_reason_moves_those_back_to_the_outbox(dead: DeadLetters) -> None:
    """``replay --reason rejected`` moves every rejected dead letter, and no other."""
    run = await cli(dead.config, "replay", "--reason", "rejected")

    assert (0, "replayed 3 dead letter(s) into the outbox\n") == (run.status, run.stdout)
    assert {"too_large", "expired"} == {row["reason"] for row in await listed(dead)}
    assert sorted(orjson.dumps(dead.sent[i]) for i in BAD) == sorted(outbox_bodies(dead.db))


async def test_purge_older_than_keeps_recent_ones_and_purge_all_removes_all(
    dead: DeadLetters,
) -> None:
    """``purge --older-than 1h`` removes only older dead letters; ``purge --all`` the rest."""
    run = await cli(dead.config, "purge", "--older-than", "1h")

    assert (0, "purged 1 dead letter(s)\n") == (run.status, run.stdout)
    assert sorted(set(EXPECTED) - {"old-bad"}) == sorted(
        letter_event_id(row) for row in await listed(dead)
    )

    run = await cli(dead.config, "purge", "--all")

    assert (0, "purged 4 dead letter(s)\n") == (run.status, run.stdout)
    assert [] == await listed(dead)
    assert f"0 dead letter(s) in {dead.db}\n" == (await cli(dead.config, "list")).stderr
    assert [] == outbox_bodies(dead.db)


async def test_purge_with_a_bad_duration_exits_2_and_purges_nothing(dead: DeadLetters) -> None:
    """``purge --older-than soon`` exits 2 with a message naming the bad duration."""
    run = await cli(dead.config, "purge", "--older-than", "soon")

    assert 2 == run.status
    assert "" == run.stdout
    assert "'soon' is not a duration" in run.stderr
    assert 5 == len(await listed(dead))


def daemon_config(dead: DeadLetters, tmp_path: Path, intake: FakeIntake) -> Path:
    """A config for a relay on the fixture's outbox, sending to ``intake``, flushing fast."""
    return write_config(
        tmp_path / "daemon.toml",
        server={"port": 0},
        outbox={"path": str(dead.db)},
        upstream={"url": intake.url, "api_key": API_KEY},
        flusher={"flush_interval_s": 0.05},
        retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.2},
    )


async def post(relay: RelayProcess, *events: dict[str, Any]) -> int:
    """POST ``events`` as one request to the relay; the status it answered."""
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.url, data=orjson.dumps(request(*events)), headers=headers) as resp,
    ):
        return resp.status


async def test_replay_while_the_daemon_runs_gets_delivered(
    dead: DeadLetters, tmp_path: Path
) -> None:
    """A dead letter replayed beside a running relay on the same outbox is delivered by it."""
    async with FakeIntake() as intake:
        async with RelayProcess(daemon_config(dead, tmp_path, intake)) as relay:
            assert 5 == len(await listed(dead))
            target = await letter_id(dead, "bad-1")
            run = await cli(dead.config, "replay", "--id", str(target))
            assert (0, "replayed 1 dead letter(s) into the outbox\n") == (run.status, run.stdout)
            replayed_at = time.monotonic()

            # The relay notices another process's commit within about a second.
            await intake.wait_for_events(1, timeout_s=5)
            took_s = time.monotonic() - replayed_at
            print(f"\nreplayed dead letter delivered by the running relay after {took_s:.1f} s")
            assert 0 == await relay.terminate()

        assert [dead.sent["bad-1"]] == intake.accepted_events
        assert [] == outbox_bodies(dead.db)
        assert 4 == len(await listed(dead))
        assert [] == [entry for entry in relay.logs if entry.get("level") == "error"]


async def test_events_posted_after_a_replay_beside_the_daemon_are_delivered_promptly(
    dead: DeadLetters, tmp_path: Path
) -> None:
    """A replay beside a running relay does not hold back the events posted after it."""
    async with FakeIntake() as intake:
        async with RelayProcess(daemon_config(dead, tmp_path, intake)) as relay:
            target = await letter_id(dead, "bad-1")
            assert 0 == (await cli(dead.config, "replay", "--id", str(target))).status
            after = [event("job", id="after-1"), event("job", id="after-2")]

            # The first post wakes the flusher, whose batch (read from disk) holds the replay.
            assert 202 == await post(relay, after[0])
            await intake.wait_for_events(2, timeout_s=5)
            assert {"bad-1", "after-1"} == {event_id(e) for e in intake.accepted_events}
            # The next post must go out within a flush interval or so, not at the next recount.
            assert 202 == await post(relay, after[1])
            try:
                await intake.wait_for_events(3, timeout_s=5)
                promptly = True
            except TimeoutError:
                promptly = False
            assert 0 == await relay.terminate()

        # On SIGTERM the final flush sends whatever is left, and 'stopped' says what remains.
        (stopped,) = relay.events("stopped")
        left = outbox_bodies(dead.db)
        assert (True, 0, []) == (promptly, stopped["pending"], left)
        assert [dead.sent["bad-1"], *after] == intake.accepted_events


@pytest.mark.parametrize("action", ["replay", "purge"])
async def test_acting_on_everything_needs_all_and_dry_run_changes_nothing(
    dead: DeadLetters, action: str
) -> None:
    """Without a selection replay and purge refuse; ``--all --dry-run`` counts; ``--all`` acts."""
    bare = await cli(dead.config, action)
    dry = await cli(dead.config, action, "--all", "--dry-run")
    assert 5 == len(await listed(dead))
    done = await cli(dead.config, action, "--all")

    assert (2, "") == (bare.status, bare.stdout)
    assert "--all" in bare.stderr
    into = " into the outbox" if action == "replay" else ""
    assert (0, f"would {action} 5 dead letter(s){into}; nothing changed (dry run)\n") == (
        dry.status,
        dry.stdout,
    )
    past = {"replay": "replayed", "purge": "purged"}[action]
    assert (0, f"{past} 5 dead letter(s){into}\n") == (done.status, done.stdout)
    assert [] == await listed(dead)
    assert (5 if action == "replay" else 0) == len(outbox_bodies(dead.db))


async def test_replay_takes_several_ids_after_one_flag_and_names_unknown_ones(
    dead: DeadLetters,
) -> None:
    """``replay --id A B C`` moves A and B and says that C names no dead letter (exit 1)."""
    first, second = await letter_id(dead, "bad-1"), await letter_id(dead, "big")
    unknown = max(first, second) + 1000

    run = await cli(dead.config, "replay", "--id", str(first), str(second), str(unknown))

    assert (1, "replayed 2 dead letter(s) into the outbox\n") == (run.status, run.stdout)
    assert f"ci-relay: no dead letter with id {unknown}\n" == run.stderr
    assert sorted([orjson.dumps(dead.sent["bad-1"]), orjson.dumps(dead.sent["big"])]) == sorted(
        outbox_bodies(dead.db)
    )


async def test_list_shows_level_name_and_pipeline(dead: DeadLetters) -> None:
    """Each ``list`` row names the event's level, name and pipeline."""
    run = await cli(dead.config, "list")

    rows = {int(line.split()[0]): line for line in run.stdout.splitlines()}
    row = rows[await letter_id(dead, "bad-1")]
    assert 'level="job"  name="compile"  pipeline="Deploy to AWS"' in row, row


async def test_list_on_a_missing_outbox_fails_and_creates_nothing(tmp_path: Path) -> None:
    """``list`` with a mistyped path exits 2 naming it, and creates neither file nor directory."""
    missing = tmp_path / "typo" / "outbox.db"
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(missing)})

    run = await cli(config, "list")

    assert (2, "", f"ci-relay: no outbox at {missing}\n") == (run.status, run.stdout, run.stderr)
    assert not missing.parent.exists()


async def test_list_opens_read_only_and_leaves_a_foreign_file_untouched(tmp_path: Path) -> None:
    """``list`` on a SQLite file that is not an outbox refuses and adds nothing to it."""
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
    before = other.read_bytes()
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(other)})

    run = await cli(config, "list")

    assert (2, "") == (run.status, run.stdout)
    assert "not a ci-relay outbox" in run.stderr
    assert (before, ["other.db", "relay.toml"]) == (
        other.read_bytes(),
        sorted(os.listdir(tmp_path)),
    )


async def test_the_id_in_the_log_is_the_id_list_and_replay_use(tmp_path: Path) -> None:
    """The id a relay logs for a rejected event is the one ``list`` and ``replay --id`` use."""
    db = tmp_path / "outbox.db"
    async with FakeIntake() as intake:
        intake.default = RejectEvents(is_bad)
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(db)},
            upstream={"url": intake.url, "api_key": API_KEY},
            flusher={"flush_interval_s": 0.05},
        )
        async with RelayProcess(config) as relay:
            # Earlier deliveries move the outbox ids away from the dead-letter table's own.
            for i in range(3):
                assert 202 == await post(relay, event("job", id=f"good-{i}"))
            await intake.wait_for_events(3, timeout_s=10)
            assert 202 == await post(relay, event("job", id="bad-1"))
            for _ in range(200):
                if relay.events("event rejected"):
                    break
                await asyncio.sleep(0.05)
            (rejected,) = relay.events("event rejected")
            letters = [
                orjson.loads(line)
                for line in (await cli(config, "list", "--json")).stdout.splitlines()
            ]
            run = await cli(config, "replay", "--id", str(rejected["id"]))
            assert 0 == await relay.terminate()

    assert [(rejected["id"], "bad-1")] == [(row["id"], letter_event_id(row)) for row in letters]
    assert (0, "replayed 1 dead letter(s) into the outbox\n") == (run.status, run.stdout)
