"""The flusher against a real outbox and a real HTTP intake: every row of the delivery rules.

Each test drives ``Flusher.flush_once()`` step by step against a `FakeIntake` on loopback,
except the few where the ``run()`` loop itself is the subject.
"""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from relay.config import FlusherSettings, OutboxSettings, RetrySettings
from relay.delivery.flusher import STEP_FAILED, STILL_FAILING, FlushResult
from relay.delivery.step import StepFailed
from relay.delivery.upstream import Retry, Unauthorized
from relay.store.outbox import Outbox
from relay.testing.samples import event
from tests.delivery.delivery_rig import DeadLetter, Rig, running
from tests.fake_intake import (
    PIPELINE_PATH,
    Accept,
    Answer,
    Drop,
    RateLimited,
    RejectEvents,
    Slow,
    Status,
    TooLarge,
)
from tests.helpers import (
    API_KEY,
    EMPTY_BODY_BYTES,
    HOUR,
    Clock,
    ahead,
    big_job,
    body_len,
    closed_port,
    jobs,
    named,
    wire_body,
)

# --- 2xx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [Accept(), Status(200)], ids=["202", "200"])
async def test_2xx_deletes_the_batch_and_sends_the_originals(rig: Rig, answer: Answer) -> None:
    """A 2xx deletes the batch, whose original events reached the intake in order with the key."""
    originals = jobs(5)
    await rig.put(originals)
    rig.intake.queue(answer)

    result = await rig.flusher().flush_once()

    assert FlushResult(delivered=5, requests=1) == result
    assert 0 == rig.outbox.counts.events
    assert 0 == rig.outbox.counts.bytes
    assert [] == await rig.outbox.next_batch(1000, 1 << 40)
    [received] = rig.intake.received
    assert PIPELINE_PATH == received.path
    assert originals == received.events
    assert {"data": originals} == orjson.loads(received.body)
    assert wire_body(originals) == received.body
    assert API_KEY == received.headers["DD-API-KEY"]
    assert "application/json" == received.headers["Content-Type"]
    assert received.headers["User-Agent"].startswith("ci-relay/")


async def test_empty_outbox_sends_nothing(rig: Rig) -> None:
    """With nothing pending a step sends no request and reports nothing done."""
    flusher = rig.flusher()

    assert FlushResult() == await flusher.flush_once()
    assert [] == rig.intake.received
    assert "delivering" == flusher.state


# --- batching ----------------------------------------------------------------------------


async def test_batches_hold_at_most_1000_events_in_order(rig: Rig) -> None:
    """2500 pending events go as requests of 1000, 1000 and 500, in receive order."""
    originals = jobs(2500)
    await rig.put(originals)
    flusher = rig.flusher()

    results = [await flusher.flush_once() for _ in range(4)]

    assert [1000, 1000, 500, 0] == [r.delivered for r in results]
    assert [1000, 1000, 500] == [len(r.events) for r in rig.intake.received]
    assert originals == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


async def test_batches_stay_under_the_byte_cap(rig: Rig) -> None:
    """With a small byte cap each request's events fit under it, an oversized event goes alone."""
    cap = 2048
    before, after = jobs(7, "before"), jobs(7, "after")
    big = big_job("big", cap)
    originals = [*before, big, *after]
    await rig.put(originals)
    flusher = rig.flusher(settings=FlusherSettings(batch_max_bytes=cap))

    for _ in range(len(originals)):
        if not rig.outbox.counts.events:
            break
        result = await flusher.flush_once()
        assert result.blocked_by is None

    assert originals == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events
    alone = [r for r in rig.intake.received if big in r.events]
    assert [[big]] == [r.events for r in alone]
    assert body_len([big]) - EMPTY_BODY_BYTES > cap
    others = [r for r in rig.intake.received if big not in r.events]
    assert [] == [len(r.body) for r in others if len(r.body) - EMPTY_BODY_BYTES > cap]
    # The cap binds: several events per request, but never all of them at once.
    assert all(len(r.events) > 1 for r in others[:-1])
    assert len(others) > 2


# --- gzip on the wire --------------------------------------------------------------------


async def test_gzip_when_compress_is_on(rig: Rig) -> None:
    """With compress=True the body travels gzip-encoded and decodes to the same JSON body."""
    originals = jobs(3)
    await rig.put(originals)

    await rig.flusher(rig.upstream(compress=True)).flush_once()

    [received] = rig.intake.received
    assert "gzip" == received.headers["Content-Encoding"]
    assert b"\x1f\x8b" == received.raw[:2]
    expected_body = wire_body(originals)
    assert expected_body == gzip.decompress(received.raw)
    assert expected_body == received.body
    assert originals == rig.intake.accepted_events


async def test_plain_json_by_default(rig: Rig) -> None:
    """By default the body travels as plain JSON without a Content-Encoding."""
    originals = jobs(3)
    await rig.put(originals)

    await rig.flusher().flush_once()

    [received] = rig.intake.received
    assert "Content-Encoding" not in received.headers
    assert wire_body(originals) == received.raw
    assert originals == rig.intake.accepted_events


# --- 408, 429, 5xx, timeout, connection error: retry -------------------------------------

RETRYABLE: list[tuple[str, Answer, float]] = [
    ("408", Status(408), 0.0),
    ("429-retry-after", RateLimited(retry_after="3"), 3.0),
    ("429-ratelimit-reset", RateLimited(retry_after=None, reset="7"), 7.0),
    ("500", Status(500), 0.0),
    ("503", Status(503), 0.0),
    ("503-retry-after", Status(503, headers={"Retry-After": "5"}), 5.0),
    ("timeout", Slow(2), 0.0),
    ("drop", Drop(), 0.0),
]


@pytest.mark.parametrize(
    ("answer", "min_wait_s"),
    [(answer, wait) for _, answer, wait in RETRYABLE],
    ids=[name for name, _, _ in RETRYABLE],
)
async def test_retryable_answer_keeps_and_resends_the_same_batch(
    rig: Rig, answer: Answer, min_wait_s: float
) -> None:
    """A retryable answer keeps every event, counts the attempt and resends the same batch."""
    originals = jobs(5)
    await rig.put(originals)
    rig.intake.queue(answer, answer)
    flusher = rig.flusher(
        rig.upstream(request_timeout_s=0.3),
        retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05),
    )

    for attempt in (1, 2):
        result = await flusher.flush_once()
        assert isinstance(result.blocked_by, Retry), result
        assert 0 == result.delivered
        assert 1 == result.requests
        assert result.wait_s >= min_wait_s
        assert "retrying" == flusher.state
        assert 5 == rig.outbox.counts.events
        assert originals == await rig.pending()
        assert [attempt] * 5 == rig.attempts()
        assert [] == rig.intake.accepted_events

    result = await flusher.flush_once()

    assert FlushResult(delivered=5, requests=1) == result
    assert "delivering" == flusher.state
    assert originals == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events
    # Every request the intake recorded carried the same events in the same order (a timed-out
    # request is recorded only when the slow answer ends, so it may be missing here).
    assert all(originals == r.events for r in rig.intake.received)


async def test_connection_refused_is_retried_and_loses_nothing(rig: Rig) -> None:
    """A refused connection is a Retry; every event stays and is delivered once the intake is up."""
    originals = jobs(4)
    await rig.put(originals)
    down = rig.flusher(rig.upstream(url=f"http://127.0.0.1:{closed_port()}"))

    result = await down.flush_once()

    assert isinstance(result.blocked_by, Retry), result
    assert result.blocked_by.reason.startswith("connection error"), result.blocked_by
    assert 0 == result.delivered
    assert originals == await rig.pending()
    assert [1] * 4 == rig.attempts()

    result = await rig.flusher().flush_once()

    assert FlushResult(delivered=4, requests=1) == result
    assert originals == rig.intake.accepted_events


async def test_retry_never_gives_up_and_backoff_is_capped(rig: Rig) -> None:
    """Thirty 503s in a row keep every event; waits grow within their ceiling and stay capped."""
    initial, cap = 0.01, 0.2
    originals = jobs(3)
    await rig.put(originals)
    rig.intake.default = Status(503)
    # Isolation in halves is the subject of tests/delivery/test_delivery_faults.py; here, plain
    # backoff.
    flusher = rig.flusher(
        retry=RetrySettings(
            initial_backoff_s=initial, multiplier=2.0, max_backoff_s=cap, isolate_after=1000
        )
    )

    waits: list[float] = []
    for attempt in range(1, 31):
        result = await flusher.flush_once()
        assert isinstance(result.blocked_by, Retry), result
        assert originals == await rig.pending()
        assert [attempt] * 3 == rig.attempts()
        waits.append(result.wait_s)

    assert 30 == len(rig.intake.received)
    assert all(originals == r.events for r in rig.intake.received)
    ceilings = [min(cap, initial * 2.0**i) for i in range(30)]
    assert [] == [(i, w, c) for i, (w, c) in enumerate(zip(waits, ceilings, strict=True)) if w > c]
    assert all(0 <= w <= cap for w in waits)
    # Full jitter draws from [0, ceiling]: 20 draws capped at 0.2 all under 0.04 is ~1e-14.
    assert max(waits[10:]) > 4 * initial

    rig.intake.default = Accept()
    result = await flusher.flush_once()
    assert FlushResult(delivered=3, requests=1) == result
    assert originals == rig.intake.accepted_events

    # After a success the backoff starts over from the initial ceiling.
    await rig.put(jobs(1, "later"))
    rig.intake.queue(Status(503))
    result = await flusher.flush_once()
    assert isinstance(result.blocked_by, Retry), result
    assert result.wait_s <= initial


# --- 400: bisect and dead-letter the refused events --------------------------------------


async def test_400_dead_letters_only_the_refused_events(rig: Rig) -> None:
    """A 400 is bisected: the two refused events are dead-lettered with the detail, 8 delivered."""
    originals = jobs(10)
    await rig.put(originals)
    rig.intake.default = RejectEvents(named("job-00003", "job-00007"))

    result = await rig.flusher().flush_once()

    assert 8 == result.delivered
    assert 2 == result.dead_lettered
    assert result.blocked_by is None
    expected = [
        DeadLetter("rejected", 400, "invalid event: data[0] (id=job-00003)", originals[3]),
        DeadLetter("rejected", 400, "invalid event: data[0] (id=job-00007)", originals[7]),
    ]
    assert expected == rig.dead_letters()
    delivered = [e for i, e in enumerate(originals) if i not in (3, 7)]
    assert delivered == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events
    assert [] == await rig.pending()


async def test_one_poison_event_does_not_block_a_full_batch(rig: Rig) -> None:
    """One refused event among 1000 is dead-lettered and the other 999 are delivered in order."""
    originals = jobs(1000)
    await rig.put(originals)
    rig.intake.default = RejectEvents(named("job-00613"))

    result = await rig.flusher().flush_once()

    assert 999 == result.delivered
    assert 1 == result.dead_lettered
    assert [originals[613]] == [d.event for d in rig.dead_letters()]
    assert ["rejected"] == [d.reason for d in rig.dead_letters()]
    assert originals[:613] + originals[614:] == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


async def test_retry_during_bisection_keeps_the_unsent_part(rig: Rig) -> None:
    """A 503 met while bisecting a 400 keeps the unsent half, which is resent next, in order."""
    originals = jobs(4)
    await rig.put(originals)
    reject = RejectEvents(named("job-00001"))
    # Whole batch: 400; [0, 1]: 400; [0]: 202; [1]: 400 (dead letter); [2, 3]: 503.
    rig.intake.queue(reject, reject, reject, reject, Status(503))
    flusher = rig.flusher()

    result = await flusher.flush_once()

    assert isinstance(result.blocked_by, Retry), result
    assert (1, 1, 5) == (result.delivered, result.dead_lettered, result.requests)
    assert originals[2:] == await rig.pending()
    assert [1, 1] == rig.attempts()
    assert [originals[1]] == [d.event for d in rig.dead_letters()]

    assert FlushResult(delivered=2, requests=1) == await flusher.flush_once()
    assert [originals[0], originals[2], originals[3]] == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


async def test_dead_letter_counts_earlier_attempts(rig: Rig) -> None:
    """A refused event's dead letter counts the failed attempts before the refusal too."""
    originals = jobs(1)
    await rig.put(originals)
    rig.intake.queue(Status(503), Status(503), RejectEvents(named("job-00000")))
    flusher = rig.flusher()

    for _ in range(3):
        await flusher.flush_once()

    with closing(sqlite3.connect(rig.db)) as conn:
        rows = list(conn.execute("SELECT reason, attempts FROM dead_letters"))
    assert [("rejected", 3)] == rows


# --- 413: split in halves ----------------------------------------------------------------


async def test_413_splits_the_batch_until_it_fits(rig: Rig) -> None:
    """A 413 splits the batch in halves; both halves pass, all delivered in order, none lost."""
    originals = jobs(8)
    await rig.put(originals)
    limit = max(body_len(originals[:4]), body_len(originals[4:]))
    assert body_len(originals) > limit
    rig.intake.default = TooLarge(limit)

    result = await rig.flusher().flush_once()

    assert FlushResult(delivered=8, requests=3, failed_requests=1) == result
    assert [413, 202, 202] == [r.answered for r in rig.intake.received]
    assert originals == rig.intake.accepted_events
    assert [] == rig.dead_letters()
    assert 0 == rig.outbox.counts.events


async def test_413_dead_letters_a_single_event_too_large(rig: Rig) -> None:
    """An event that alone is still too large is dead-lettered as too_large; the rest pass."""
    normal = jobs(5)
    limit = body_len(normal[:3]) + 10
    big = big_job("big", limit)
    originals = [*normal[:4], big, normal[4]]
    await rig.put(originals)
    rig.intake.default = TooLarge(limit)

    result = await rig.flusher().flush_once()

    assert 5 == result.delivered
    assert 1 == result.dead_lettered
    assert result.blocked_by is None
    detail = f"payload of {body_len([big])} bytes exceeds the limit of {limit} bytes"
    assert [DeadLetter("too_large", 413, detail, big)] == rig.dead_letters()
    assert normal == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


# --- 401, 403: pause, keep everything, probe ---------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorized_keeps_everything_and_probes(rig: Rig, status: int) -> None:
    """A 401/403 keeps every event, pauses as 'unauthorized' until a probe gets a 2xx."""
    originals = jobs(4)
    await rig.put(originals)
    rig.intake.queue(Status(status, detail="bad key"), Status(status, detail="bad key"))
    flusher = rig.flusher(settings=FlusherSettings(unauthorized_probe_s=7.5))

    with capture_logs() as logs:
        for attempt in (1, 2):
            result = await flusher.flush_once()
            assert Unauthorized(status, "bad key") == result.blocked_by
            assert 7.5 == result.wait_s
            assert 0 == result.delivered
            assert "unauthorized" == flusher.state
            assert originals == await rig.pending()
            assert [attempt] * 4 == rig.attempts()

    # One error log for the condition, not one per probe.
    assert 1 == len([entry for entry in logs if entry["log_level"] == "error"])
    assert [] == rig.intake.accepted_events

    result = await flusher.flush_once()

    assert FlushResult(delivered=4, requests=1) == result
    assert "delivering" == flusher.state
    assert originals == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


# --- expiry ------------------------------------------------------------------------------


async def test_expired_events_are_dead_lettered_without_being_sent(rig: Rig) -> None:
    """Past the 18-hour window finished events are dead-lettered as expired; running ones go."""
    finished_job = event("job", id="old-job", name="old-job")
    running_job = event("running_job", id="run-job", name="run-job")
    finished_pipeline = event("pipeline", name="old-pipeline")
    running_pipeline = event("running_pipeline", name="run-pipeline")
    await rig.put([finished_job, running_job, finished_pipeline, running_pipeline])

    result = await rig.flusher(clock=ahead(19 * HOUR)).flush_once()

    assert FlushResult(delivered=2, dead_lettered=2, requests=1) == result
    assert [[running_job, running_pipeline]] == [r.events for r in rig.intake.received]
    letters = rig.dead_letters()
    assert [finished_job, finished_pipeline] == [d.event for d in letters]
    assert [("expired", None)] * 2 == [(d.reason, d.upstream_status) for d in letters]
    assert all("18 hours" in d.detail for d in letters)
    assert 0 == rig.outbox.counts.events


async def test_all_expired_sends_no_request(rig: Rig) -> None:
    """A batch of only expired events is dead-lettered and the intake receives nothing."""
    originals = jobs(3)
    await rig.put(originals)

    result = await rig.flusher(clock=ahead(19 * HOUR)).flush_once()

    assert FlushResult(dead_lettered=3) == result
    assert [] == rig.intake.received
    assert originals == [d.event for d in rig.dead_letters()]
    assert 0 == rig.outbox.counts.events
    with closing(sqlite3.connect(rig.db)) as conn:
        # Never sent, so no attempt is counted.
        assert [(0,)] * 3 == conn.execute("SELECT attempts FROM dead_letters").fetchall()


async def test_events_inside_the_window_are_sent(rig: Rig) -> None:
    """An event whose end is under 18 hours old at the flusher's clock is sent, not expired."""
    originals = jobs(2)
    await rig.put(originals)

    result = await rig.flusher(clock=ahead(17.5 * HOUR)).flush_once()

    assert FlushResult(delivered=2, requests=1) == result
    assert [] == rig.dead_letters()
    assert originals == rig.intake.accepted_events


@pytest.mark.parametrize(("offset_h", "warns"), [(2.0, True), (0.5, False)])
async def test_warns_when_pending_events_near_the_window(
    rig: Rig, offset_h: float, warns: bool
) -> None:
    """run() warns, even while the upstream fails, when pending events ended long ago."""
    await rig.put(jobs(2))
    rig.intake.default = Status(503)
    flusher = rig.flusher(
        settings=FlusherSettings(expiry_warning_s=HOUR, flush_interval_s=0),
        clock=ahead(offset_h * HOUR),
    )

    with capture_logs() as logs:
        async with running(flusher):
            # The check comes before the first send of the loop.
            await rig.intake.wait_for_requests(1, timeout_s=5)

    near = [e for e in logs if e["log_level"] == "warning" and "18-hour" in e["event"]]
    assert warns == bool(near), logs
    assert 2 == rig.outbox.counts.events


# --- order across retries ----------------------------------------------------------------


async def test_running_event_never_overtaken_by_its_finished_event(rig: Rig) -> None:
    """After a 503 on a pipeline's running event it still reaches the intake before its end."""
    running = event("running_pipeline", unique_id="pipeline-1", name="p")
    finished = event("pipeline", unique_id="pipeline-1", name="p")
    await rig.put([running])
    await rig.put([finished])
    rig.intake.queue(Status(503))
    flusher = rig.flusher(settings=FlusherSettings(batch_max_events=1))

    results = [await flusher.flush_once() for _ in range(3)]

    assert [0, 1, 1] == [r.delivered for r in results]
    assert [[running], [running], [finished]] == [r.events for r in rig.intake.received]
    assert [running, finished] == rig.intake.accepted_events


async def test_order_kept_when_a_whole_batch_is_retried(rig: Rig) -> None:
    """A running and a finished event retried together are accepted running first."""
    running = event("running_pipeline", unique_id="pipeline-2", name="p")
    finished = event("pipeline", unique_id="pipeline-2", name="p")
    await rig.put([running])
    await rig.put([finished])
    rig.intake.queue(Status(503))
    flusher = rig.flusher()

    assert isinstance((await flusher.flush_once()).blocked_by, Retry)
    assert FlushResult(delivered=2, requests=1) == await flusher.flush_once()

    assert [running, finished] == rig.intake.accepted_events


# --- in flight and at-least-once --------------------------------------------------------


async def test_events_appended_during_a_flight_are_kept(rig: Rig) -> None:
    """Events appended while a batch is in flight survive its ack and go in the next batch."""
    first, second = jobs(3, "first"), jobs(3, "second")
    await rig.put(first)
    rig.intake.queue(Slow(0.2))
    flusher = rig.flusher()

    flight = asyncio.create_task(flusher.flush_once())
    await rig.intake.wait_for_arrivals(1, timeout_s=10)
    await rig.put(second)
    result = await flight

    assert FlushResult(delivered=3, requests=1) == result
    assert second == await rig.pending()
    assert FlushResult(delivered=3, requests=1) == await flusher.flush_once()
    assert [first, second] == [r.events for r in rig.intake.received]


async def test_batch_in_flight_at_a_crash_is_sent_after_restart(rig: Rig) -> None:
    """A batch whose flight is cut short (a crash) is still in the outbox and sent after restart."""
    originals = jobs(3)
    await rig.put(originals)
    rig.intake.queue(Slow(5))

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rig.flusher().flush_once(), timeout=0.3)
    await rig.outbox.close()
    rig.outbox = await Outbox.open(OutboxSettings(path=rig.db))

    result = await rig.flusher().flush_once()

    assert FlushResult(delivered=3, requests=1) == result
    assert originals == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


# --- no API key --------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [None, ""], ids=["none", "empty"])
async def test_no_api_key_buffers_and_sends_nothing(rig: Rig, api_key: str | None) -> None:
    """Without an API key the state is no_api_key and run() sends nothing, keeping the events."""
    flusher = rig.flusher(
        rig.upstream(api_key=api_key), settings=FlusherSettings(flush_interval_s=0.01)
    )
    assert "no_api_key" == flusher.state
    originals = jobs(3)

    task = asyncio.create_task(flusher.run())
    await rig.put(originals)
    await asyncio.sleep(0.2)
    flusher.stop()
    await asyncio.wait_for(task, timeout=5)

    assert [] == rig.intake.received
    assert originals == await rig.pending()
    assert "no_api_key" == flusher.state


# --- the run() loop ----------------------------------------------------------------------


async def test_run_sends_a_partial_batch_after_the_flush_interval(rig: Rig) -> None:
    """run() sends a batch well short of 1000 events once its oldest waited flush_interval_s."""
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=0.05))
    originals = jobs(3)

    async with running(flusher):
        await rig.put(originals)
        await rig.intake.wait_for_events(3, timeout_s=5)

    assert [originals] == [r.events for r in rig.intake.received]
    assert 0 == rig.outbox.counts.events


async def test_run_sends_a_full_batch_without_waiting(rig: Rig) -> None:
    """run() sends a full batch of 1000 at once, without waiting for flush_interval_s."""
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=60))
    originals = jobs(1000)

    async with running(flusher):
        await rig.put(originals)
        await rig.intake.wait_for_events(1000, timeout_s=5)

    assert [originals] == [r.events for r in rig.intake.received]


async def test_run_backs_off_then_delivers(rig: Rig) -> None:
    """run() retries after a 429, not before its Retry-After, and then delivers everything."""
    originals = jobs(3)
    await rig.put(originals)
    rig.intake.queue(RateLimited(retry_after="0.3"))
    flusher = rig.flusher(
        settings=FlusherSettings(flush_interval_s=0),
        retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05),
    )

    started = time.monotonic()
    async with running(flusher):
        await rig.intake.wait_for_events(3, timeout_s=5)

    assert time.monotonic() - started >= 0.3
    assert [429, 202] == [r.answered for r in rig.intake.received]
    assert originals == rig.intake.accepted_events


async def test_run_probes_again_after_unauthorized(rig: Rig) -> None:
    """run() pauses for unauthorized_probe_s after a 401, then probes and delivers everything."""
    first, second = jobs(2, "first"), jobs(2, "second")
    await rig.put(first)
    rig.intake.queue(Status(401))
    flusher = rig.flusher(
        settings=FlusherSettings(flush_interval_s=0, unauthorized_probe_s=0.3),
    )

    started = time.monotonic()
    async with running(flusher):
        await rig.put(second)
        await rig.intake.wait_for_events(4, timeout_s=5)

    assert time.monotonic() - started >= 0.3
    assert 401 == rig.intake.received[0].answered
    assert [*first, *second] == rig.intake.accepted_events
    assert "delivering" == flusher.state


async def test_stop_makes_run_return_after_a_final_flush(rig: Rig) -> None:
    """stop() ends run() after a final flush that delivers what is pending."""
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=60))
    originals = jobs(5)

    task = asyncio.create_task(flusher.run())
    await rig.put(originals)
    for _ in range(5):  # let the loop see the events and go back to waiting for the interval
        await asyncio.sleep(0)
    assert [] == rig.intake.received
    flusher.stop()
    await asyncio.wait_for(task, timeout=10)

    assert [originals] == [r.events for r in rig.intake.received]
    assert 0 == rig.outbox.counts.events


@pytest.mark.parametrize(
    "answer",
    [RateLimited(retry_after="30"), Status(401)],
    ids=["backing-off", "unauthorized"],
)
async def test_final_flush_honours_a_pending_wait(rig: Rig, answer: Answer) -> None:
    """A final flush while a retry or probe is pending sends nothing more and keeps the events."""
    originals = jobs(3)
    await rig.put(originals)
    rig.intake.queue(answer)
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=60))
    assert (await flusher.flush_once()).blocked_by is not None

    flusher.stop()
    await asyncio.wait_for(flusher.run(), timeout=5)

    assert 1 == len(rig.intake.received)
    assert originals == await rig.pending()


async def test_final_flush_is_bounded_when_the_upstream_fails(rig: Rig) -> None:
    """When the upstream fails during the final flush, run() returns and every event stays."""
    originals = jobs(3)
    await rig.put(originals)
    rig.intake.default = Status(503)
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=60))

    flusher.stop()
    await asyncio.wait_for(flusher.run(), timeout=5)

    assert 1 == len(rig.intake.received)
    assert originals == await rig.pending()


async def test_final_flush_delivers_live_events_behind_expired_ones(rig: Rig) -> None:
    """The final flush does not stop at a step that only dead-lettered expired events."""
    old = jobs(2, "old")
    running = [event("running_job", id=f"run-{i}", name=f"run-{i}") for i in range(2)]
    await rig.put([*old, *running])
    flusher = rig.flusher(
        settings=FlusherSettings(batch_max_events=2, flush_interval_s=60),
        clock=ahead(19 * HOUR),
    )

    flusher.stop()
    await asyncio.wait_for(flusher.run(), timeout=5)

    assert old == [d.event for d in rig.dead_letters()]
    assert running == rig.intake.accepted_events
    assert 0 == rig.outbox.counts.events


# --- a step that raises ------------------------------------------------------------------


def _stored_ends(db: Path) -> dict[int, object]:
    """Each stored event's end_at by id, read from another connection."""
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT id, end_at FROM events ORDER BY id").fetchall())


def _store_end(db: Path, event_id: int, end_at: object) -> None:
    """Write one stored event's end_at from another connection, as another process would."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE events SET end_at = ? WHERE id = ?", (end_at, event_id))
        conn.commit()


async def test_a_step_that_raises_backs_off_keeps_the_events_and_recovers(rig: Rig) -> None:
    """A stored row that makes a step raise (an end time stored as text) keeps every event and
    backs off as delivery_failing, logged with its traceback once per failure run; the next
    step that succeeds brings the state back to delivering."""
    await rig.put(jobs(2))
    (first_id, first_end), (second_id, _) = _stored_ends(rig.db).items()
    _store_end(rig.db, first_id, "not a time")
    flusher = rig.flusher(settings=FlusherSettings(batch_max_events=1))

    with capture_logs() as logs:
        failed = [await flusher.flush_once() for _ in range(3)]
        failing_state, pending = flusher.state, rig.outbox.counts.events
        _store_end(rig.db, first_id, first_end)
        # Before the step that heals: the batch after it is read while that one is sent.
        _store_end(rig.db, second_id, "not a time")
        healed = await flusher.flush_once()
        healed_state = flusher.state
        again = await flusher.flush_once()

    assert [True] * 3 == [isinstance(step.blocked_by, StepFailed) for step in failed]
    assert all(step.wait_s > 0 for step in failed), [step.wait_s for step in failed]
    assert ("delivery_failing", 2) == (failing_state, pending)
    assert (1, "delivering") == (healed.delivered, healed_state)
    assert (True, "delivery_failing") == (isinstance(again.blocked_by, StepFailed), flusher.state)
    assert 4 == flusher.retries
    traced = [entry for entry in logs if entry.get("exc_info") is not None]
    assert [TypeError, TypeError] == [type(entry["exc_info"]) for entry in traced]
    assert flusher.last_error is not None
    assert flusher.last_error.answer.startswith("relay error: TypeError")
    assert 1 == len(rig.intake.accepted_events)


async def test_a_failure_that_goes_on_is_recalled_once_a_minute_without_its_traceback(
    rig: Rig,
) -> None:
    """Steps failing alike for over a minute add one reminder line, without the traceback."""
    await rig.put(jobs(1))
    ((only_id, _),) = _stored_ends(rig.db).items()
    _store_end(rig.db, only_id, "not a time")
    clock = Clock()
    flusher = rig.flusher(clock=clock)

    with capture_logs() as logs:
        for _ in range(3):
            await flusher.flush_once()
        clock.now += 61
        for _ in range(3):
            await flusher.flush_once()

    errors = [(entry["event"], "exc_info" in entry) for entry in logs]
    assert [(STEP_FAILED, True), (STILL_FAILING, False)] == errors
