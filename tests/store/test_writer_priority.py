"""The writer puts ingest first: appends commit before the maintenance writes queued with
them, and an ack's commit does not wait for the disk while appends do; the backlog still
drains while runners post without pause."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.store.outbox import Outbox
from relay.testing.process import RelayProcess
from relay.testing.samples import event
from tests.delivery.test_delivery_daemon import (
    delivered_ids,
    post,
    relay_config,
    session,
    wait_for_ids,
)
from tests.fake_intake import FakeIntake

BACKLOG = 3_000
WRITERS = 10
MAX_POSTS_PER_WRITER = 2_000

__all__ = ["session"]  # the fixture, shared with the delivery tests

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@pytest.fixture
async def outbox(outbox_settings: OutboxSettings) -> AsyncIterator[Outbox]:
    opened = await Outbox.open(outbox_settings)
    yield opened
    await opened.close()


def accepted() -> AcceptedEvent:
    return AcceptedEvent(orjson.dumps(event("job")), end_at=None)


async def test_appends_queued_behind_a_maintenance_write_commit_before_it(
    outbox: Outbox,
) -> None:
    """An append handed to the writer just after a maintenance write is committed first."""
    seen: list[int] = []

    def work(conn: sqlite3.Connection) -> tuple[int, int]:
        ((count,),) = conn.execute("SELECT count(*) FROM events").fetchall()
        seen.append(count)
        return 0, 0

    # Both are queued before the writer wakes: the apply first, then the append.
    await asyncio.gather(outbox._writer.apply(work), outbox.append([accepted(), accepted()]))

    assert [2] == seen
    assert 2 == outbox.counts.events


async def test_an_ack_commits_without_waiting_for_the_disk_and_appends_still_do(
    outbox: Outbox,
) -> None:
    """A write marked not durable (acks) runs at synchronous NORMAL; the writes after it,
    durable ones and appends, are back at the configured FULL."""
    levels: list[str] = []

    def level(conn: sqlite3.Connection) -> tuple[int, int]:
        ((value,),) = conn.execute("PRAGMA synchronous").fetchall()
        levels.append(SYNCHRONOUS[value])
        return 0, 0

    await outbox.append([accepted()])
    await outbox._writer.apply(level, durable=False)
    await outbox._writer.apply(level)
    await outbox._writer.apply(level, durable=False)
    await outbox.append([accepted()])
    await outbox._writer.apply(level)

    assert ["NORMAL", "FULL", "NORMAL", "FULL"] == levels


async def test_acks_are_the_writes_that_skip_the_wait_for_the_disk(outbox: Outbox) -> None:
    """Acking a batch and acking events are the writes run at synchronous NORMAL."""
    statements: list[str] = []
    await outbox.append([accepted() for _ in range(4)])
    tracing = True

    def trace(statement: str) -> None:
        if tracing:
            statements.append(statement)

    await outbox._conn.set_trace_callback(trace)
    request = await outbox.next_request(2, 1 << 30)
    assert request is not None
    await outbox.ack_batch(request)
    await outbox.ack(await outbox.next_batch(1, 1 << 30))
    await outbox.record_failure(await outbox.next_batch(1, 1 << 30), 0.0)
    tracing = False

    relaxed = [s for s in statements if s.startswith("PRAGMA synchronous")]
    assert ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"] * 2 == relaxed
    assert 1 == outbox.counts.events


async def test_the_backlog_drains_while_runners_post_without_pause(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A backlog is delivered in full while ten runners keep posting, and so is every event
    they got a 202 for: ingest first never stalls delivery."""
    async with asyncio.timeout(120), FakeIntake() as intake:
        backlog = [f"backlog-{i}" for i in range(BACKLOG)]
        unkeyed = relay_config(tmp_path, intake, api_key=None, name="unkeyed.toml")
        async with RelayProcess(unkeyed) as relay:
            for first in range(0, BACKLOG, 1000):
                jobs = (event("job", id=i) for i in backlog[first : first + 1000])
                assert 202 == await post(session, relay, *jobs)
            assert 0 == await relay.terminate()
        assert [] == intake.received

        config = relay_config(tmp_path, intake, flusher={"batch_max_events": 100})
        accepted: set[str] = set()
        drained = asyncio.Event()

        async def runner(w: int) -> None:
            for n in range(MAX_POSTS_PER_WRITER):
                if drained.is_set():
                    return
                job = f"runner-{w}-{n}"
                if 202 == await post(session, relay, event("job", id=job)):
                    accepted.add(job)

        async with RelayProcess(config) as relay:
            runners = [asyncio.create_task(runner(w)) for w in range(WRITERS)]
            await wait_for_ids(intake, set(backlog), timeout_s=90)
            still_posting = not all(task.done() for task in runners)
            drained.set()
            await asyncio.gather(*runners)
            await wait_for_ids(intake, accepted, timeout_s=60)
            assert 0 == await relay.terminate()

        assert still_posting, "the runners stopped before the backlog was delivered"
        assert accepted
        assert set(backlog) | accepted == set(delivered_ids(intake))
