"""What the flusher says as delivery goes: failures louder as they persist, progress, resumes."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

from relay.config import FlusherSettings, OutboxSettings, RetrySettings
from relay.contract.intake import PIPELINE_PATH
from relay.testing.samples import event, request
from tests.delivery.delivery_rig import Rig
from tests.fake_intake import Accept, Status
from tests.helpers import JSON, Clock, jobs, serving

Log = MutableMapping[str, Any]


def logged(logs: list[Log], event_name: str) -> list[Log]:
    return [entry for entry in logs if entry["event"] == event_name]


async def test_a_persistent_failure_is_logged_louder_as_it_lasts(rig: Rig) -> None:
    """A 503 retried: info at first, warning past a minute, error past five, naming the URL."""
    clock = Clock()
    await rig.put(jobs(1))
    rig.intake.default = Status(503, detail="intake overloaded")
    flusher = rig.flusher(clock=clock)

    with capture_logs() as logs:
        for _ in range(12):
            await flusher.flush_once()
            clock.now += 30

    retries = logged(logs, "upstream retry")
    levels = [entry["log_level"] for entry in retries]
    assert ["info", "info"] == levels[:2]
    assert "warning" in levels
    assert "error" == levels[-1]
    assert levels.index("warning") < levels.index("error")
    assert {rig.intake.url + PIPELINE_PATH} == {entry["url"] for entry in retries}
    assert {"503: intake overloaded"} == {entry["last_answer"] for entry in retries}

    rig.intake.default = Accept()
    with capture_logs() as logs:
        await flusher.flush_once()
    [resumed] = logged(logs, "delivery resumed")
    assert ("info", "retrying", 1) == (
        resumed["log_level"],
        resumed["after_state"],
        resumed["delivered"],
    )


async def test_the_first_delivery_after_a_start_is_logged(rig: Rig) -> None:
    """The first 2xx after a start says so once; later ones are quiet at info."""
    await rig.put(jobs(2))
    flusher = rig.flusher()
    with capture_logs() as logs:
        await flusher.flush_once()
        await rig.put(jobs(1, "later"))
        await flusher.flush_once()
    [first] = logged(logs, "first delivery")
    assert (2, rig.intake.url + PIPELINE_PATH) == (first["delivered"], first["url"])
    assert [] == [e for e in logs if e["log_level"] == "info" and e is not first]


async def test_debug_shows_each_batch_sent(rig: Rig) -> None:
    """Each request sent is one debug line with its size, outcome, status and latency."""
    await rig.put(jobs(3))
    rig.intake.queue(Status(500))
    flusher = rig.flusher()
    with capture_logs() as logs:
        await flusher.flush_once()
        await flusher.flush_once()
    sent = logged(logs, "batch sent")
    assert [(3, "Retry", 500), (3, "Delivered", None)] == [
        (e["events"], e["outcome"], e["status"]) for e in sent
    ]
    assert all(e["log_level"] == "debug" and e["latency_ms"] >= 0 for e in sent)


async def test_store_refusals_are_one_warning_not_one_line_each(tmp_path: Path) -> None:
    """Runners refused because the outbox is full: a warning with a count, not a line each."""
    body = orjson.dumps(request(event("job")))
    full_after_one = OutboxSettings(path=tmp_path / "outbox.db", max_events=1)
    async with serving(full_after_one) as relay:
        with capture_logs() as logs:
            statuses = []
            for _ in range(6):
                async with relay.client.post(relay.url, data=body, headers=JSON) as resp:
                    statuses.append(resp.status)
    assert [202, 503, 503, 503, 503, 503] == statuses
    [warning] = logged(logs, "runners refused with 503: the outbox cannot take events")
    assert ("warning", 1) == (warning["log_level"], warning["refused"])
    assert [] == [e for e in logs if e["event"] == "request refused" and e["status"] == 503]


async def test_no_progress_line_while_nothing_moves(rig: Rig) -> None:
    """Failed requests alone are not progress: an outage logs retries, no progress lines."""
    rig.intake.default = Status(503)
    flusher = rig.flusher(
        settings=FlusherSettings(flush_interval_s=0),
        retry=RetrySettings(initial_backoff_s=0.05, max_backoff_s=0.1, isolate_after=1000),
    )
    with capture_logs() as logs:
        task = asyncio.create_task(flusher.run())
        await rig.put(jobs(2))
        await rig.intake.wait_for_requests(2, timeout_s=10)
        await asyncio.sleep(1.2)  # past the loop's once-a-second tick, which would report
        flusher.stop()
        await asyncio.wait_for(task, 10)
    assert flusher.retries >= 2
    assert [] == logged(logs, "delivery progress")


async def test_progress_is_reported_while_events_move(rig: Rig) -> None:
    """While events are delivered the loop says so at info, with what is still pending."""
    flusher = rig.flusher(settings=FlusherSettings(flush_interval_s=0))
    with capture_logs() as logs:
        task = asyncio.create_task(flusher.run())
        await rig.put(jobs(4))
        await rig.intake.wait_for_events(4, timeout_s=10)
        for _ in range(150):  # the loop reports on its once-a-second tick: at most 3 s
            if logged(logs, "delivery progress"):
                break
            await asyncio.sleep(0.02)
        flusher.stop()
        await asyncio.wait_for(task, 10)
    [progress] = logged(logs, "delivery progress")
    assert ("info", 4, 0, 0) == (
        progress["log_level"],
        progress["delivered"],
        progress["dead_lettered"],
        progress["pending"],
    )
