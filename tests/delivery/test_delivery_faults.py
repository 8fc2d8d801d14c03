"""Delivery that cannot lose, stall or die: redirects, store failures, poison events,
systemic refusals, capped waits, misconfiguration and bounded memory.

Like tests/delivery/test_flusher.py, each test drives ``Flusher.flush_once()`` against a
`FakeIntake` on loopback and a real outbox file; the clock is the flusher's injected one where
a test needs minutes to pass.
"""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import tracemalloc
from collections.abc import Iterator, MutableMapping
from contextlib import closing, contextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from relay.config import FlusherSettings, RetrySettings
from relay.delivery.flusher import FlushResult
from relay.delivery.step import StoreFailed
from relay.delivery.upstream import Misconfigured, Reject, Retry
from tests.delivery.delivery_rig import DeadLetter, Rig
from tests.fake_intake import (
    PIPELINE_PATH,
    Accept,
    Answer,
    FailWhen,
    FakeIntake,
    RateLimited,
    Raw,
    Status,
)
from tests.helpers import Clock, big_job, jobs, named

MIB = 1024 * 1024


def errors(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    """The error-level log entries named ``event``."""
    return [e for e in logs if e["log_level"] == "error" and e["event"] == event]


# --- 3xx: never followed -----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_keeps_the_events(rig: Rig, status: int) -> None:
    """A 3xx deletes nothing, sends nothing (no key, no events) elsewhere, and says what to fix."""
    originals = jobs(3)
    await rig.put(originals)
    async with FakeIntake() as elsewhere:
        location = elsewhere.url + PIPELINE_PATH
        rig.intake.queue(Raw(status, b"", {"Location": location}))
        flusher = rig.flusher()

        with capture_logs() as logs:
            result = await flusher.flush_once()

        assert [] == elsewhere.received
    assert isinstance(result.blocked_by, Misconfigured), result
    assert (0, 1, "misconfigured") == (result.delivered, result.requests, flusher.state)
    assert originals == await rig.pending()
    [line] = errors(logs, "upstream redirects; delivery retries with backoff")
    assert (status, location) == (line["status"], line["location"])
    assert "upstream.url" in line["hint"]

    result = await flusher.flush_once()
    assert (3, "delivering") == (result.delivered, flusher.state)
    assert originals == rig.intake.accepted_events


# --- 404, 405, 415: misconfiguration -----------------------------------------------------


@pytest.mark.parametrize("status", [404, 405, 415])
async def test_wrong_url_or_method_is_misconfiguration(rig: Rig, status: int) -> None:
    """404, 405 and 415 keep the events, back off, and log an error naming the effective URL."""
    originals = jobs(2)
    await rig.put(originals)
    rig.intake.default = Status(status)
    flusher = rig.flusher(retry=RetrySettings(initial_backoff_s=4, max_backoff_s=8))

    with capture_logs() as logs:
        first = await flusher.flush_once()
        second = await flusher.flush_once()

    assert isinstance(first.blocked_by, Misconfigured), first
    assert "misconfigured" == flusher.state
    assert 0 < second.wait_s <= 8
    assert originals == await rig.pending()
    assert [2, 2] == rig.attempts()
    [line] = errors(logs, "upstream answers as if the URL were wrong; delivery retries")
    assert (status, rig.intake.url + PIPELINE_PATH) == (line["status"], line["url"])


async def test_url_credentials_never_reach_a_log(rig: Rig) -> None:
    """user:password in upstream.url is used for the request; login and password are redacted
    in every log line."""
    await rig.put(jobs(1))
    secret = "pass-word-secret"  # noqa: S105
    url = rig.intake.url.replace("http://", f"http://relay:{secret}@")
    rig.intake.default = Status(404)
    flusher = rig.flusher(rig.upstream(url=url))

    with capture_logs() as logs:
        await flusher.flush_once()

    [received] = rig.intake.received
    assert received.headers["Authorization"].startswith("Basic ")
    assert [] == [entry for entry in logs if secret in repr(entry)]
    assert any("http://***@" in str(entry.get("url")) for entry in logs), logs
    assert [] == [entry for entry in logs if "relay:" in str(entry.get("url"))]


# --- waits are capped --------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        RateLimited(retry_after="86000"),
        RateLimited(retry_after=None, reset="86000"),
        Status(503, headers={"Retry-After": "7200"}),
    ],
    ids=["429-retry-after", "429-ratelimit-reset", "503-retry-after"],
)
async def test_upstream_waits_are_capped(rig: Rig, answer: Answer) -> None:
    """A wait the upstream asks for is obeyed up to retry.max_wait_s, and the cap is logged."""
    await rig.put(jobs(1))
    rig.intake.queue(answer)
    flusher = rig.flusher(retry=RetrySettings(max_wait_s=600))

    with capture_logs() as logs:
        result = await flusher.flush_once()

    assert isinstance(result.blocked_by, Retry), result
    assert result.wait_s == 600
    [capped] = [e for e in logs if e["event"] == "upstream asked for a longer wait; capped"]
    assert capped["max_wait_s"] == 600


# --- store failures are transient --------------------------------------------------------


@contextmanager
def store_locked(rig: Rig) -> Iterator[None]:
    """Another process's write lock on the outbox file, held until the block ends."""
    with closing(sqlite3.connect(rig.db, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def short_busy_timeout(rig: Rig) -> None:
    """Make the outbox's writer give up on a lock after 50 ms instead of 10 s."""

    def work(conn: sqlite3.Connection) -> tuple[int, int]:
        conn.execute("PRAGMA busy_timeout = 50")
        return 0, 0

    await rig.outbox._writer.apply(work)


@pytest.mark.parametrize(
    ("answer", "write"),
    [
        (Accept(), "ack"),
        (Status(503), "record the failed attempt"),
        (Status(400, detail="bad event"), "dead-letter"),
    ],
    ids=["ack", "record-failure", "dead-letter"],
)
async def test_a_store_failure_after_a_send_is_transient(
    rig: Rig, answer: Answer, write: str
) -> None:
    """A locked store after a send loses nothing, raises nothing, and delivery resumes after."""
    originals = jobs(1)
    await rig.put(originals)
    await short_busy_timeout(rig)
    rig.intake.queue(answer)
    flusher = rig.flusher()

    with store_locked(rig), capture_logs() as logs:
        result = await flusher.flush_once()

    assert isinstance(result.blocked_by, StoreFailed), (write, result)
    assert "database is locked" in result.blocked_by.detail
    assert ("store_unavailable", True) == (flusher.state, result.wait_s > 0)
    assert originals == await rig.pending()
    [line] = errors(logs, "the outbox cannot be written; delivery backs off")
    assert "database is locked" in line["error"]

    result = await flusher.flush_once()

    assert ("delivering", []) == (flusher.state, await rig.pending())
    # At least once: what was sent before the failed ack is sent again.
    assert originals == rig.intake.received[-1].events


async def test_run_keeps_going_through_a_locked_store(rig: Rig) -> None:
    """The delivery loop survives a store locked past its busy timeout and drains afterwards."""
    originals = jobs(5)
    await rig.put(originals)
    await short_busy_timeout(rig)
    flusher = rig.flusher(
        settings=FlusherSettings(flush_interval_s=0),
        retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    with store_locked(rig):
        task = asyncio.create_task(flusher.run())
        await rig.intake.wait_for_requests(3, timeout_s=20)
        assert (False, "store_unavailable") == (task.done(), flusher.state)
    for _ in range(500):  # at most 10 s
        if not rig.outbox.counts.events:
            break
        await asyncio.sleep(0.02)
    flusher.stop()
    await asyncio.wait_for(task, 10)
    assert ([], "delivering") == (await rig.pending(), flusher.state)


# --- a poison event: isolated, then dead-lettered only while others are delivered --------


async def test_a_poison_event_is_isolated_within_a_minute(rig: Rig) -> None:
    """With default settings the 100 events beside a 5xx-poison event go within a minute."""
    originals = jobs(101)
    poison = originals[40]
    await rig.put(originals)
    rig.intake.default = FailWhen(named(poison["attributes"]["resource"]["name"]))
    flusher = rig.flusher()

    waited, steps = 0.0, 0
    result = FlushResult()
    while not result.delivered and steps < 10:
        result = await flusher.flush_once()
        waited += result.wait_s if not result.delivered else 0.0
        steps += 1

    assert (6, 100) == (steps, result.delivered)
    assert waited < 60
    assert [e for e in originals if e is not poison] == rig.intake.accepted_events
    assert [poison] == await rig.pending()
    assert [] == rig.dead_letters()


async def test_a_poison_event_is_dead_lettered_while_others_are_delivered(rig: Rig) -> None:
    """A single event failing 5xx for 10 attempts over 10 minutes, others delivered, is dead."""
    clock = Clock()
    originals = jobs(10)
    await rig.put(originals)
    rig.intake.default = FailWhen(named("job-00003"), Status(502, detail="upstream choked"))
    flusher = rig.flusher(clock=clock)

    for step in range(60):
        await rig.put(jobs(2, f"later{step:02d}"))
        await flusher.flush_once()
        clock.now += 60
        if rig.dead_letters():
            break

    [letter] = rig.dead_letters()
    assert DeadLetter("upstream_error", 502, "upstream choked", originals[3]) == letter
    with closing(sqlite3.connect(rig.db)) as conn:
        attempts, first, last = conn.execute(
            "SELECT attempts, first_failure_at, last_failure_at FROM dead_letters"
        ).fetchone()
    assert attempts >= 10
    assert last - first >= 600
    assert [] == await rig.pending()
    delivered = rig.intake.accepted_events
    assert len(delivered) == len({e["attributes"]["resource"]["id"] for e in delivered})
    assert originals[3] not in delivered


async def test_a_full_outage_dead_letters_nothing(rig: Rig) -> None:
    """Every request failing for 15 hours keeps every event, in order, and never floods."""
    clock = Clock()
    originals = jobs(200)
    await rig.put(originals)
    rig.intake.default = Status(503)
    flusher = rig.flusher(clock=clock)

    steps = 300
    for _ in range(steps):
        result = await flusher.flush_once()
        assert isinstance(result.blocked_by, Retry), result
        clock.now += 180

    assert [] == rig.dead_letters()
    assert originals == await rig.pending()
    # Isolation passes in an outage stop early: a few requests per pass, not 2N - 1.
    assert len(rig.intake.received) < 4 * steps


async def test_an_outage_after_isolation_dead_letters_nothing(rig: Rig) -> None:
    """A poison event held aside is not dead-lettered while nothing else is delivered either."""
    clock = Clock()
    originals = jobs(20)
    await rig.put(originals)
    rig.intake.default = FailWhen(named("job-00005"))
    flusher = rig.flusher(clock=clock)
    for _ in range(6):
        await flusher.flush_once()
    assert [originals[5]] == await rig.pending()

    rig.intake.default = Status(503)
    during = jobs(3, "during")
    await rig.put(during)
    for _ in range(100):
        await flusher.flush_once()
        clock.now += 540

    assert [] == rig.dead_letters()
    assert [originals[5], *during] == await rig.pending()


# --- a 400 about the request, not an event -----------------------------------------------


async def test_a_systemic_400_pauses_instead_of_dead_lettering_everything(rig: Rig) -> None:
    """An intake refusing every request keeps the outbox, at most the threshold dead-lettered."""
    originals = jobs(300)
    await rig.put(originals)
    rig.intake.default = Status(400, detail="header X-Forwarded-Proto is not allowed")
    flusher = rig.flusher(retry=RetrySettings(systemic_reject_after=20))

    with capture_logs() as logs:
        for _ in range(5):
            result = await flusher.flush_once()
            if flusher.state == "rejecting":
                break
        assert "rejecting" == flusher.state
        assert isinstance(result.blocked_by, Reject), result
        dead = len(rig.dead_letters())
        assert dead <= 20
        for _ in range(5):
            probe = await flusher.flush_once()
            assert (0, 1) == (probe.dead_lettered, probe.requests)

    assert dead == len(rig.dead_letters())
    assert originals[dead:] == await rig.pending()
    [line] = errors(logs, "upstream refuses every request alike; delivery paused")
    assert "header X-Forwarded-Proto is not allowed" == line["detail"]

    rig.intake.default = Accept()
    result = await flusher.flush_once()
    assert (1000 >= result.delivered > 0, "delivering") == (True, flusher.state)


async def test_refused_events_with_a_shared_detail_are_still_dead_lettered(rig: Rig) -> None:
    """Bad events among good ones are dead-lettered even when the intake names them alike."""
    originals = jobs(64)
    bad = {f"job-{i:05d}" for i in range(0, 64, 2)}
    await rig.put(originals)
    rig.intake.default = FailWhen(named(*bad), Status(400, detail="invalid tag"))
    flusher = rig.flusher(retry=RetrySettings(systemic_reject_after=20))

    result = await flusher.flush_once()

    assert (32, 32, "delivering") == (result.delivered, result.dead_lettered, flusher.state)
    assert 32 == len(rig.dead_letters())


# --- memory follows the byte cap, not the events -----------------------------------------


@contextmanager
def peak_traced() -> Iterator[list[int]]:
    """The peak of Python allocations inside the block, in bytes (in the list it yields)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


async def test_a_batch_never_loads_more_than_its_byte_cap(rig: Rig) -> None:
    """Eight pending events of 1 MiB with a 1.5 MB cap: one is read, not all eight."""
    await rig.put([big_job(f"big{i}", MIB) for i in range(8)])

    with peak_traced() as peak:
        batch = await rig.outbox.next_batch(1000, 1_500_000)

    assert 1 == len(batch)
    assert peak[0] < 3 * MIB, peak


async def test_an_upstream_answer_is_read_at_most_64_kib(rig: Rig) -> None:
    """A gzip error body inflating to 64 MiB costs the relay well under 64 MiB to read."""
    await rig.put(jobs(1))
    bomb = gzip.compress(b"x" * (64 * MIB), compresslevel=1)
    rig.intake.queue(Raw(503, bomb, {"Content-Encoding": "gzip", "Content-Type": "text/plain"}))
    flusher = rig.flusher()

    with peak_traced() as peak:
        result = await flusher.flush_once()

    assert isinstance(result.blocked_by, Retry), result
    assert len(result.blocked_by.reason) <= 2100
    assert peak[0] < 8 * MIB, peak
