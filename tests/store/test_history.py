"""The recent history in the outbox file: a record of each event once delivered or
dead-lettered, written in the transaction that settles it; pending events read as such."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime

import pytest

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.contract.schema import validate_events
from relay.store.outbox import Outbox
from relay.testing.samples import event


def accepted(*events: dict[str, object]) -> list[AcceptedEvent]:
    return validate_events(list(events))


@pytest.fixture
async def outbox(outbox_settings: OutboxSettings) -> AsyncIterator[Outbox]:
    opened = await Outbox.open(outbox_settings)
    yield opened
    await opened.close()


async def deliver_all(outbox: Outbox) -> None:
    batch = await outbox.next_request(1000, 10_000_000)
    assert batch is not None
    await outbox.ack_batch(batch)


async def test_a_delivered_batch_leaves_a_record_of_each_event(outbox: Outbox) -> None:
    """Each delivered event: its level, ids, names, status, times, queue time, URL, error."""
    pipeline = event("pipeline")
    resource = pipeline["attributes"]["resource"]
    job = event(
        "job",
        pipeline_unique_id=resource["unique_id"],
        queue_time=1500,
        status="error",
        error={"message": "x" * 900, "type": "script_failure"},
        stage_id="s-1",
        stage_name="build",
    )
    await outbox.append(accepted(pipeline, job))
    await deliver_all(outbox)
    records = await outbox.pipeline_records(resource["unique_id"])
    by_level = {record.level: record for record in records}
    assert ["delivered", "delivered"] == [record.fate for record in records]
    started = datetime.fromisoformat(resource["start"]).timestamp()
    assert (resource["unique_id"], resource["name"], "success") == (
        by_level["pipeline"].id,
        by_level["pipeline"].name,
        by_level["pipeline"].status,
    )
    assert abs(started - (by_level["pipeline"].start or 0)) < 0.002
    record = by_level["job"]
    assert (1500, "error", "s-1", "build") == (
        record.queue_time_ms,
        record.status,
        record.stage_id,
        record.stage_name,
    )
    assert "x" * 500 == record.error  # cut short
    assert resource["unique_id"] == record.pipeline_id


async def test_a_dead_letter_leaves_a_record_with_its_reason(outbox: Outbox) -> None:
    """An event moved to the dead letters: its record says so and why."""
    job = event("job")
    await outbox.append(accepted(job))
    events = await outbox.next_batch(10, 1_000_000)
    await outbox.dead_letter(events, "rejected", 400, "bad", time.time())
    pipeline_id = job["attributes"]["resource"]["pipeline_unique_id"]
    (record,) = await outbox.pipeline_records(pipeline_id)
    assert ("dead_lettered", "rejected") == (record.fate, record.reason)


async def test_pending_events_read_as_pending(outbox: Outbox) -> None:
    """An event still in the outbox is in its pipeline's records, pending."""
    job = event("job")
    await outbox.append(accepted(job))
    pipeline_id = job["attributes"]["resource"]["pipeline_unique_id"]
    assert ["pending"] == [r.fate for r in await outbox.pipeline_records(pipeline_id)]
    assert ["pending"] == [r.fate for r in await outbox.recent_records(100, 100)]


async def test_without_history_nothing_is_recorded(outbox_settings: OutboxSettings) -> None:
    """history.max_events = 0: delivery settles events and keeps no record."""
    outbox = await Outbox.open(outbox_settings, history=False)
    try:
        await outbox.append(accepted(event("job")))
        await deliver_all(outbox)
        assert [] == await outbox.recent_records(100, 100)
    finally:
        await outbox.close()


async def test_a_body_that_is_no_event_is_acked_without_a_record(outbox: Outbox) -> None:
    """A stored body that is not an event's JSON (a salvaged one) never blocks its ack."""
    await outbox.append([AcceptedEvent(b"not json", None), AcceptedEvent(b'{"a": 1}', None)])
    await deliver_all(outbox)
    assert (0, []) == (outbox.counts.events, await outbox.recent_records(100, 100))


async def test_compaction_keeps_the_fields_and_drops_the_copies(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """The drain copies bodies; the upkeep's compaction turns each into its shown fields
    (the same record read back), and drops a copy that is no event."""
    job = event("job", queue_time=2500)
    await outbox.append([*accepted(job), AcceptedEvent(b"not json", None)])
    await deliver_all(outbox)
    pipeline_id = job["attributes"]["resource"]["pipeline_unique_id"]
    before = await outbox.pipeline_records(pipeline_id)
    assert 2 == await outbox.compact_history(chunk=1)
    after = await outbox.pipeline_records(pipeline_id)
    assert before == after
    assert 2500 == after[0].queue_time_ms
    with closing(sqlite3.connect(outbox_settings.path)) as db:
        rows = db.execute("SELECT body IS NULL, fields IS NOT NULL FROM history").fetchall()
    assert [(1, 1)] == rows


async def test_records_are_pruned_by_age_and_bound(outbox: Outbox) -> None:
    """Older than the window, or past the bound (oldest first), records go."""
    for _ in range(3):
        await outbox.append(accepted(event("job")))
        await deliver_all(outbox)
    assert 0 == await outbox.prune_history(3600, 1000, time.time())
    assert 1 == await outbox.prune_history(3600, 2, time.time() + 1)
    assert 2 == len(await outbox.recent_records(100, 100))
    assert 2 == await outbox.prune_history(60, 1000, time.time() + 3600)
    assert [] == await outbox.recent_records(100, 100)
