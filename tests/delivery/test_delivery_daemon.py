"""Delivery by the relay as a real subprocess to a fake intake: soak, crash, signals, keys."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.delivery.flusher import STEP_FAILED
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import (
    Accept,
    Answer,
    Drop,
    FakeIntake,
    Flaky,
    RejectEvents,
    Slow,
    Status,
)
from tests.helpers import API_KEY, JSON, ci_relay, event_id, jobs, wait_until

# Small intervals keep every scenario fast; the logic under test does not depend on them.
FAST_FLUSHER: dict[str, Any] = {"flush_interval_s": 0.05, "shutdown_grace_s": 2.0}
FAST_RETRY: dict[str, Any] = {"initial_backoff_s": 0.01, "multiplier": 2.0, "max_backoff_s": 0.2}


def relay_config(
    tmp_path: Path,
    intake: FakeIntake,
    *,
    api_key: str | None = API_KEY,
    flusher: dict[str, Any] | None = None,
    name: str = "relay.toml",
) -> Path:
    """A config for a relay on a free port, its outbox in ``tmp_path``, sending to ``intake``."""
    upstream: dict[str, Any] = {"url": intake.url}
    if api_key is not None:
        upstream["api_key"] = api_key
    return write_config(
        tmp_path / name,
        server={"port": 0},
        outbox={"path": str(outbox_path(tmp_path))},
        upstream=upstream,
        flusher=FAST_FLUSHER | (flusher or {}),
        retry=FAST_RETRY,
    )


def outbox_path(tmp_path: Path) -> Path:
    """Where every relay of a test keeps its outbox."""
    return tmp_path / "outbox.db"


def pending_bodies(db: Path) -> list[bytes]:
    """The bodies in the outbox's events table, oldest first, read beside any running relay."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT body FROM events ORDER BY id")]


def delivered_ids(intake: FakeIntake) -> list[str]:
    """The ids of every event the intake accepted, duplicates included."""
    return [event_id(e) for e in intake.accepted_events]


async def wait_for_ids(intake: FakeIntake, ids: set[str], timeout_s: float) -> None:
    """Return once the intake has accepted every id in ``ids`` (duplicates do not count)."""
    deadline = time.monotonic() + timeout_s
    while not ids <= set(delivered_ids(intake)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = len(ids - set(delivered_ids(intake)))
            raise AssertionError(f"{missing} of {len(ids)} events not delivered in {timeout_s} s")
        await intake.wait_for_events(len(intake.accepted_events) + 1, remaining)


async def post(session: aiohttp.ClientSession, relay: RelayProcess, *events: Any) -> int:
    """POST ``events`` as one request to the relay; the status it answered."""
    async with session.post(relay.url, data=orjson.dumps(request(*events)), headers=JSON) as resp:
        await resp.read()
        return resp.status


def log_lines(relay: RelayProcess, level: str) -> list[dict[str, Any]]:
    """The relay's log lines of ``level``."""
    return [entry for entry in relay.logs if entry.get("level") == level]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for posting to the relay."""
    async with aiohttp.ClientSession() as client:
        yield client


class Tap:
    """A ``RejectEvents`` predicate that rejects nothing but records each event of the request.

    The intake evaluates it when the request arrives, before any ``Slow`` delay, so ``seen``
    tells the test that a batch is in flight and what it holds.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.seen = asyncio.Event()

    def __call__(self, delivered: dict[str, Any]) -> bool:
        self.events.append(delivered)
        self.seen.set()
        return False


def flaky_answers(count: int, rate: float, seed: int) -> list[Answer]:
    """``count`` answers failing with probability ``rate``: mostly 503, one in five a Drop."""
    rng = random.Random(seed)
    answers: list[Answer] = []
    for _ in range(count):
        if rng.random() >= rate:
            answers.append(Accept())
        elif rng.random() < 0.2:
            answers.append(Drop())
        else:
            answers.append(Status(503))
    return answers


SOAK_WRITERS = 20
SOAK_EVENTS_PER_WRITER = 500
SOAK_EVENTS_PER_REQUEST = 5
SOAK_BATCH = 50
SOAK_FAILURE_RATE = 0.3
SOAK_SEED = 20240611


async def test_soak_flaky_intake_delivers_every_accepted_event(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    record_property: Callable[[str, object], None],
) -> None:
    """10,000 events from 20 concurrent writers, 30% of upstream requests failing, all arrive."""
    async with asyncio.timeout(90), FakeIntake() as intake:
        # The first answers are drawn up front so that some failures are dropped connections;
        # should the relay need more requests, the intake goes on failing 30% of them with 503.
        intake.queue(*flaky_answers(3000, SOAK_FAILURE_RATE, SOAK_SEED))
        intake.default = Flaky(SOAK_FAILURE_RATE, seed=SOAK_SEED)
        accepted: set[str] = set()
        refused: list[int] = []
        started = time.monotonic()
        # Batches of at most 50 events make hundreds of upstream requests, so many fail.
        config = relay_config(tmp_path, intake, flusher={"batch_max_events": SOAK_BATCH})
        async with RelayProcess(config) as relay:

            async def writer(w: int) -> None:
                for first in range(0, SOAK_EVENTS_PER_WRITER, SOAK_EVENTS_PER_REQUEST):
                    ids = [f"w{w}-{i}" for i in range(first, first + SOAK_EVENTS_PER_REQUEST)]
                    status = await post(session, relay, *(event("job", id=i) for i in ids))
                    if status == 202:
                        accepted.update(ids)
                    else:
                        refused.append(status)

            await asyncio.gather(*(writer(w) for w in range(SOAK_WRITERS)))
            ingested_s = time.monotonic() - started
            await wait_for_ids(intake, accepted, timeout_s=60)
            delivered_s = time.monotonic() - started
            assert 0 == await relay.terminate()

        sent = SOAK_WRITERS * SOAK_EVENTS_PER_WRITER
        delivered = delivered_ids(intake)
        unique = set(delivered)
        duplicates = len(delivered) - len(unique)
        requests = len(intake.received)
        failures = Counter(r.answered for r in intake.received if not 200 <= r.answered < 300)
        figures = {
            "sent": sent,
            "accepted": len(accepted),
            "delivered_unique": len(unique),
            "duplicates": duplicates,
            "upstream_requests": requests,
            "failures_injected": sum(failures.values()),
            "failures_503": failures[503],
            "failures_dropped": failures[0],
            "ingest_s": round(ingested_s, 2),
            "delivered_s": round(delivered_s, 2),
        }
        for key, value in figures.items():
            record_property(key, value)
        print("\nsoak: " + " ".join(f"{k}={v}" for k, v in figures.items()))

        assert [] == refused
        assert sent == len(accepted)
        assert accepted == unique
        assert failures, "the intake injected no failure; the soak proved nothing"
        # One batch in flight at a time: each writer's events arrive in the order it sent them.
        first_seen = list(dict.fromkeys(delivered))
        for w in range(SOAK_WRITERS):
            mine = [i for i in first_seen if i.startswith(f"w{w}-")]
            assert [f"w{w}-{i}" for i in range(SOAK_EVENTS_PER_WRITER)] == mine
        (stopped,) = relay.events("stopped")
        assert 0 == stopped["pending"]


async def test_sigkill_during_flush_redelivers_after_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A relay killed mid-flush delivers every accepted event after restart, duplicates bounded."""
    async with FakeIntake() as intake:
        tap = Tap()
        intake.queue(Slow(60, then=RejectEvents(tap)))
        config = relay_config(tmp_path, intake)
        first, later = jobs(20, "first"), jobs(30, "later")
        async with RelayProcess(config) as relay:
            assert 202 == await post(session, relay, *first)
            await asyncio.wait_for(tap.seen.wait(), 10)
            for item in later:
                assert 202 == await post(session, relay, item)
            assert -9 == await relay.kill()
        in_flight = len(tap.events)
        assert 0 < in_flight <= len(first)
        assert [] == intake.accepted_events

        async with RelayProcess(config) as restarted:
            expected = {event_id(e) for e in first + later}
            await wait_for_ids(intake, expected, timeout_s=20)
            assert 0 == await restarted.terminate()

        delivered = delivered_ids(intake)
        assert expected == set(delivered)
        assert len(delivered) - len(expected) <= in_flight
        assert [] == pending_bodies(outbox_path(tmp_path))


async def test_sigterm_final_flush_delivers_pending_events(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """SIGTERM with events waiting for their flush interval sends them and exits 0."""
    async with FakeIntake() as intake:
        # A long flush interval keeps the events pending until the final flush.
        config = relay_config(tmp_path, intake, flusher={"flush_interval_s": 60.0})
        items = jobs(25, "term")
        async with RelayProcess(config) as relay:
            for first in range(0, len(items), 5):
                assert 202 == await post(session, relay, *items[first : first + 5])
            assert [] == intake.received
            assert 0 == await relay.terminate(timeout_s=10)

        assert [event_id(e) for e in items] == delivered_ids(intake)
        (stopped,) = relay.events("stopped")
        assert (25, 25, 0) == (stopped["accepted"], stopped["delivered"], stopped["pending"])
        assert [] == pending_bodies(outbox_path(tmp_path))


@pytest.mark.parametrize("hangs", [False, True], ids=["answers-503", "hangs"])
async def test_sigterm_with_intake_down_exits_promptly_and_keeps_events(
    tmp_path: Path, session: aiohttp.ClientSession, hangs: bool
) -> None:
    """SIGTERM while the intake fails or hangs exits 0 within the grace; events stay on disk."""
    tap = Tap()
    # A hanging intake holds the request open far beyond the grace (it would accept at last).
    down: Answer = Slow(60, then=RejectEvents(tap)) if hangs else Status(503)
    async with FakeIntake(default=down) as intake:
        config = relay_config(tmp_path, intake, flusher={"shutdown_grace_s": 0.5})
        items = jobs(10, "down")
        async with RelayProcess(config) as relay:
            assert 202 == await post(session, relay, *items)
            if hangs:
                await asyncio.wait_for(tap.seen.wait(), 10)
            else:
                await wait_until(lambda: len(intake.received) >= 2, 10, "two failed attempts")
            sent_at = time.monotonic()
            assert 0 == await relay.terminate(timeout_s=10)
            took_s = time.monotonic() - sent_at

        assert took_s < 3.0, f"SIGTERM took {took_s:.2f} s with shutdown_grace_s = 0.5"
        assert [] == intake.accepted_events
        (stopped,) = relay.events("stopped")
        assert (0, 10) == (stopped["delivered"], stopped["pending"])
        assert [orjson.dumps(e) for e in items] == pending_bodies(outbox_path(tmp_path))

        intake.default = Accept()
        async with RelayProcess(config) as restarted:
            await wait_for_ids(intake, {event_id(e) for e in items}, timeout_s=10)
            assert 0 == await restarted.terminate()
        assert [] == pending_bodies(outbox_path(tmp_path))


async def test_flusher_death_stops_the_process_with_status_1(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A flusher that dies on a database fault ends the process with status 1 and 'task died'."""
    async with FakeIntake(default=Status(503)) as intake:
        async with RelayProcess(relay_config(tmp_path, intake)) as relay:
            assert 202 == await post(session, relay, *jobs(3, "doomed"))
            await wait_until(lambda: len(intake.received) >= 2, 10, "the flusher retrying")
            with closing(sqlite3.connect(outbox_path(tmp_path), timeout=10)) as conn:
                conn.execute("DROP TABLE events")
                conn.commit()
            status = await relay.wait(timeout_s=10)

        assert 1 == status
        (died,) = relay.events("task died")
        assert "flusher" == died["task"]
        assert "error" == died["level"]
        assert "no such table: events" in died["exception"]
        assert "Traceback" in died["exception"]


async def test_without_api_key_events_are_kept_and_nothing_is_sent(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """With no API key the relay accepts and keeps events, sends none, and warns it waits."""
    async with FakeIntake() as intake:
        items = jobs(3, "nokey")
        async with RelayProcess(relay_config(tmp_path, intake, api_key=None)) as relay:
            assert 202 == await post(session, relay, *items)
            # Nothing to await for "sends nothing": give it 20 flush intervals to misbehave.
            await asyncio.sleep(1.0)
            assert 0 == await relay.terminate()

        assert [] == intake.received
        warnings = [e["event"] for e in log_lines(relay, "warning") if "API key" in e["event"]]
        assert warnings, f"no warning mentions the API key: {relay.logs}"
        (stopped,) = relay.events("stopped")
        assert (0, 3) == (stopped["delivered"], stopped["pending"])
        assert [orjson.dumps(e) for e in items] == pending_bodies(outbox_path(tmp_path))

        async with RelayProcess(relay_config(tmp_path, intake, name="keyed.toml")) as keyed:
            await wait_for_ids(intake, {event_id(e) for e in items}, timeout_s=10)
            assert 0 == await keyed.terminate()
        assert {API_KEY} == {r.headers["DD-API-KEY"] for r in intake.received}


REFUSED_KEY = "upstream refuses the API key; delivery paused"


async def test_refused_key_keeps_events_until_restart_with_accepting_intake(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A 401 keeps every event on disk; a restart once the intake accepts delivers them."""
    async with FakeIntake(default=Status(401)) as intake:
        # A probe interval longer than the test: only the restart can deliver.
        config = relay_config(tmp_path, intake, flusher={"unauthorized_probe_s": 600.0})
        items = jobs(5, "k401")
        async with RelayProcess(config) as relay:
            assert 202 == await post(session, relay, *items)
            await wait_until(lambda: bool(relay.events(REFUSED_KEY)), 10, "the refused-key error")
            assert 0 == await relay.terminate()

        assert 1 == len(intake.received)
        (refused,) = relay.events(REFUSED_KEY)
        assert ("error", 401) == (refused["level"], refused["status"])
        assert [orjson.dumps(e) for e in items] == pending_bodies(outbox_path(tmp_path))

        intake.default = Accept()
        async with RelayProcess(config) as restarted:
            await wait_for_ids(intake, {event_id(e) for e in items}, timeout_s=10)
            assert 0 == await restarted.terminate()
        assert [event_id(e) for e in items] == delivered_ids(intake)
        assert [] == pending_bodies(outbox_path(tmp_path))


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_is_probed_and_delivery_resumes_without_restart(
    tmp_path: Path, session: aiohttp.ClientSession, status: int
) -> None:
    """While the key is refused the relay probes, logs the error once, and resumes on 2xx."""
    async with FakeIntake(default=Status(status)) as intake:
        config = relay_config(tmp_path, intake, flusher={"unauthorized_probe_s": 0.2})
        items = jobs(5, f"k{status}")
        async with RelayProcess(config) as relay:
            assert 202 == await post(session, relay, *items)
            await wait_until(lambda: len(intake.received) >= 4, 10, "three probes after the 401")
            assert [] == intake.accepted_events
            assert [orjson.dumps(e) for e in items] == pending_bodies(outbox_path(tmp_path))

            intake.default = Accept()
            await wait_for_ids(intake, {event_id(e) for e in items}, timeout_s=10)
            await wait_until(lambda: bool(relay.events("delivery resumed")), 5, "resumed log")
            assert 0 == await relay.terminate()

        (refused,) = relay.events(REFUSED_KEY)
        assert status == refused["status"]
        assert [event_id(e) for e in items] == delivered_ids(intake)
        assert [] == pending_bodies(outbox_path(tmp_path))


async def test_a_store_locked_past_the_busy_timeout_never_stops_the_daemon(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Another process locking the outbox through an ack makes the flusher wait, not exit."""
    async with FakeIntake() as intake:
        tap = Tap()
        # Each batch is answered 202 after 1 s: the time to lock the file before its ack.
        intake.default = Slow(1.0, RejectEvents(tap))
        async with RelayProcess(relay_config(tmp_path, intake)) as relay:
            assert 202 == await post(session, relay, *jobs(2, "locked"))
            await asyncio.wait_for(tap.seen.wait(), 10)
            with closing(sqlite3.connect(outbox_path(tmp_path), isolation_level=None)) as other:
                # Held past the relay's 10 s busy timeout: the ack cannot be written.
                other.execute("BEGIN IMMEDIATE")
                await wait_until(
                    lambda: bool(relay.events("the outbox cannot be written; delivery backs off")),
                    30,
                    "the store failure to be logged",
                )
                other.execute("ROLLBACK")
            await wait_until(lambda: not pending_bodies(outbox_path(tmp_path)), 20, "the ack")
            assert 0 == await relay.terminate()

    [line] = relay.events("the outbox cannot be written; delivery backs off")
    assert ("error", "database is locked") == (line["level"], line["error"])
    assert [] == relay.events("task died")
    assert {"locked-00000", "locked-00001"} == set(delivered_ids(intake))


def store_end(db: Path, event_id: int, end_at: object) -> None:
    """Write one stored event's end_at from this process, beside any running relay."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.execute("UPDATE events SET end_at = ? WHERE id = ?", (end_at, event_id))
        conn.commit()


async def delivery_status(session: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, Any]:
    """The relay's /status document."""
    async with session.get(f"http://127.0.0.1:{relay.port}/status") as resp:
        document: dict[str, Any] = await resp.json()
        return document


async def test_a_step_that_raises_never_stops_the_daemon(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A stored row that makes every delivery step raise (an end time written as text by
    another process) keeps the relay running: state delivery_failing in /status and
    `ci-relay status` exit 12, one error line with the traceback, backoff, the events kept;
    once the row is mended the events are delivered and the state is delivering again."""
    items = jobs(2, "raise")
    async with FakeIntake() as intake:
        async with RelayProcess(relay_config(tmp_path, intake, api_key=None)) as keeper:
            assert 202 == await post(session, keeper, *items)
            assert 0 == await keeper.terminate()
        db = outbox_path(tmp_path)
        with closing(sqlite3.connect(db)) as conn:
            first_id, first_end = conn.execute(
                "SELECT id, end_at FROM events ORDER BY id"
            ).fetchone()
        store_end(db, first_id, "not a time")

        config = relay_config(tmp_path, intake, flusher={"batch_max_events": 1}, name="keyed.toml")
        async with RelayProcess(config) as relay:
            deadline = time.monotonic() + 15
            failing = await delivery_status(session, relay)
            while failing["delivery"]["retries_since_start"] < 5:
                assert time.monotonic() < deadline, failing
                await asyncio.sleep(0.05)
                failing = await delivery_status(session, relay)
            shown = await ci_relay("status", "--url", f"http://127.0.0.1:{relay.port}")
            kept = pending_bodies(db)
            store_end(db, first_id, first_end)
            await wait_for_ids(intake, {event_id(e) for e in items}, timeout_s=10)
            await wait_until(lambda: bool(relay.events("delivery resumed")), 5, "resumed log")
            resumed = await delivery_status(session, relay)
            assert 0 == await relay.terminate()

    assert ("delivery_failing", ["delivery_failing"]) == (
        failing["delivery"]["state"],
        failing["conditions"],
    )
    assert failing["delivery"]["last_error"]["answer"].startswith("relay error: TypeError")
    assert 12 == shown.status, shown
    assert [orjson.dumps(e) for e in items] == kept
    (logged,) = relay.events(STEP_FAILED)
    assert "error" == logged["level"]
    assert "Traceback" in logged["exception"]
    assert "TypeError" in logged["exception"]
    assert ("delivering", []) == (resumed["delivery"]["state"], resumed["conditions"])
    assert [] == relay.events("task died")
    assert [] == pending_bodies(db)
