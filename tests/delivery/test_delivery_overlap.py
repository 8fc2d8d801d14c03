"""The delivery loop overlaps a delivered batch's ack with the next send: order, the
read-ahead batch, and an ack that fails meanwhile (nothing lost, sent again)."""

from __future__ import annotations

import asyncio

from relay.config import FlusherSettings, RetrySettings
from relay.delivery.step import StoreFailed
from tests.delivery.delivery_rig import Rig
from tests.delivery.test_delivery_faults import short_busy_timeout, store_locked
from tests.fake_intake import Status
from tests.helpers import jobs

ONE_BY_ONE = FlusherSettings(batch_max_events=1, flush_interval_s=0)


async def test_an_ack_failing_while_the_next_batch_is_sent_keeps_both_batches(rig: Rig) -> None:
    """An ack left committing that fails is met by the next step, which is then blocked as
    store_unavailable with both batches still pending; both are sent again after."""
    originals = jobs(3)
    await rig.put(originals)
    await short_busy_timeout(rig)
    flusher = rig.flusher(settings=ONE_BY_ONE)

    with store_locked(rig):
        first = await flusher.flush_once(overlap=True)
        second = await flusher.flush_once(overlap=True)

    assert (1, None) == (first.delivered, first.blocked_by)
    assert isinstance(second.blocked_by, StoreFailed), second
    assert "database is locked" in second.blocked_by.detail
    assert originals == await rig.pending()

    for _ in range(3):
        assert 1 == (await flusher.flush_once()).delivered
    assert [] == await rig.pending()
    sent = [e for r in rig.intake.received for e in r.events]
    assert originals[:2] + originals == sent


async def test_while_acks_fail_each_step_meets_its_own(rig: Rig) -> None:
    """After an ack failed, a step does not leave its ack to the next one: every step while
    the store stays locked is blocked as store_unavailable, never reported as delivering."""
    originals = jobs(4)
    await rig.put(originals)
    await short_busy_timeout(rig)
    flusher = rig.flusher(settings=ONE_BY_ONE)

    with store_locked(rig):
        steps = [await flusher.flush_once(overlap=True) for _ in range(4)]
        states = [flusher.state]

    assert [1, 0, 0, 0] == [s.delivered for s in steps]
    assert [False, True, True, True] == [isinstance(s.blocked_by, StoreFailed) for s in steps]
    assert ["store_unavailable"] == states
    assert originals == await rig.pending()


async def test_a_read_ahead_batch_is_dropped_when_the_batch_before_it_fails(rig: Rig) -> None:
    """After a failed send the batch read ahead is not used: the failed batch goes first
    again, and every event is delivered once, in order."""
    originals = jobs(4)
    await rig.put(originals)
    rig.intake.queue(Status(200), Status(503))
    flusher = rig.flusher(settings=ONE_BY_ONE)

    first = await flusher.flush_once(overlap=True)
    failed = await flusher.flush_once(overlap=True)
    for _ in range(2):
        await flusher.flush_once(overlap=True)
    await flusher.flush_once()  # without overlap: its ack is done on return

    assert (1, 0) == (first.delivered, failed.delivered)
    assert [] == await rig.pending()
    delivered = [e for r in rig.intake.received if 200 <= r.answered < 300 for e in r.events]
    assert originals == delivered
    assert [[originals[1]]] * 2 == [r.events for r in rig.intake.received[1:3]]


async def test_the_loop_delivers_a_backlog_in_order_and_leaves_no_ack_behind(rig: Rig) -> None:
    """``run`` over many small batches delivers every event once, in order, and its counts
    are those of an empty outbox once it stops."""
    originals = jobs(60)
    await rig.put(originals)
    flusher = rig.flusher(
        settings=FlusherSettings(batch_max_events=7, flush_interval_s=0),
        retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    task = asyncio.create_task(flusher.run())
    await rig.intake.wait_for_events(60, timeout_s=20)
    flusher.stop()
    await asyncio.wait_for(task, 10)

    assert originals == rig.intake.accepted_events
    assert ([], 0) == (await rig.pending(), rig.outbox.counts.events)
