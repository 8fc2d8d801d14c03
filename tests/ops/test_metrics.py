"""GET /metrics of a real relay process: values that move as events go through; and the
collector beside a running flusher, read at every turn of the event loop."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from relay.config import FlusherSettings
from relay.ops.metrics import RelayCollector
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import request
from tests.delivery.delivery_rig import Rig, running
from tests.fake_intake import Accept, FakeIntake, RejectEvents, Status
from tests.helpers import API_KEY, JSON, event_id, jobs, named

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def relay_config(tmp_path: Path, intake: FakeIntake) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": intake.url, "api_key": API_KEY},
        flusher={"flush_interval_s": 0.05},
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "isolate_after": 1000},
    )


async def scrape(client: aiohttp.ClientSession, relay: RelayProcess) -> Samples:
    """Every sample of /metrics by (name, labels)."""
    async with client.get(f"http://127.0.0.1:{relay.port}/metrics") as resp:
        assert 200 == resp.status
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def post(client: aiohttp.ClientSession, relay: RelayProcess, body: bytes) -> int:
    async with client.post(relay.url, data=body, headers=JSON) as resp:
        return resp.status


async def test_metrics_follow_events_from_outage_to_delivery(tmp_path: Path) -> None:
    """During an outage the depth, age, failures and state show it; after, delivery does."""
    async with (
        FakeIntake(Status(503)) as intake,
        aiohttp.ClientSession() as client,
        RelayProcess(relay_config(tmp_path, intake)) as relay,
    ):
        assert 202 == await post(client, relay, orjson.dumps(request(*jobs(3))))
        assert 400 == await post(client, relay, b'{"data": {}}')
        await intake.wait_for_requests(2, timeout_s=10)
        during = await scrape(client, relay)

        intake.default = Accept()
        await intake.wait_for_events(3, timeout_s=10)
        after = await scrape(client, relay)
        for _ in range(100):  # the ack follows the 202 by a few milliseconds
            if after[("ci_relay_outbox_events", ())] == 0:
                break
            after = await scrape(client, relay)
        assert 0 == await relay.terminate()

    def state(samples: Samples, name: str) -> float:
        return samples[("ci_relay_delivery_state", (("state", name),))]

    assert 3 == during[("ci_relay_outbox_events", ())]
    assert during[("ci_relay_outbox_bytes", ())] > 0
    assert during[("ci_relay_oldest_pending_age_seconds", ())] > 0
    assert 3 == during[("ci_relay_events_accepted_total", ())]
    assert 1 == during[("ci_relay_requests_refused_total", (("reason", "invalid"),))]
    failed = during[
        ("ci_relay_upstream_requests_total", (("outcome", "retry"), ("status_class", "5xx")))
    ]
    assert failed >= 1
    assert failed == during[("ci_relay_upstream_request_seconds_count", ())]
    assert during[("ci_relay_upstream_retries_total", ())] >= 1
    assert during[("ci_relay_delivery_backoff_seconds", ())] >= 0
    assert ("ci_relay_last_delivery_timestamp_seconds", ()) not in during
    assert (2, 1, 3) == (
        during[("ci_relay_requests_received_total", ())],
        during[("ci_relay_requests_accepted_total", ())],
        during[("ci_relay_events_received_total", ())],
    )
    assert 1 == during[("ci_relay_ingest_commit_seconds_count", ())]
    assert 3 == during[("ci_relay_ingest_group_commit_events_sum", ())]
    assert 1 == during[("ci_relay_ingest_group_commit_events_bucket", (("le", "5.0"),))]
    assert 0 == during[("ci_relay_ingest_group_commit_events_bucket", (("le", "2.0"),))]
    assert (1, 0) == (state(during, "retrying"), state(during, "delivering"))
    assert 0 == during[("ci_relay_events_delivered_total", ())]

    assert (0, 0) == (after[("ci_relay_outbox_events", ())], after[("ci_relay_outbox_bytes", ())])
    assert 0 == after[("ci_relay_oldest_pending_age_seconds", ())]
    assert 3 == after[("ci_relay_events_delivered_total", ())]
    delivered = (
        "ci_relay_upstream_requests_total",
        (("outcome", "delivered"), ("status_class", "2xx")),
    )
    assert 1 == after[delivered]
    assert failed + 1 <= after[("ci_relay_upstream_request_seconds_count", ())]
    assert after[("ci_relay_last_delivery_timestamp_seconds", ())] > 0
    assert 0 == after[("ci_relay_delivery_backoff_seconds", ())]
    assert (0, 1) == (state(after, "retrying"), state(after, "delivering"))


async def test_dead_letters_by_reason_come_from_the_store_after_a_restart(tmp_path: Path) -> None:
    """A rejected event is counted by reason from the file, by the next process as well."""
    good, bad = jobs(2)
    async with FakeIntake(RejectEvents(named(event_id(bad)))) as intake:
        path = relay_config(tmp_path, intake)
        async with aiohttp.ClientSession() as client:
            async with RelayProcess(path) as relay:
                assert 202 == await post(client, relay, orjson.dumps(request(good, bad)))
                await intake.wait_for_events(1, timeout_s=10)
                first = await scrape(client, relay)
                for _ in range(200):  # the dead letter follows the bisection's last answer
                    if first[("ci_relay_dead_letters", (("reason", "rejected"),))]:
                        break
                    first = await scrape(client, relay)
                assert 0 == await relay.terminate()
            async with RelayProcess(path) as relay:
                second = await scrape(client, relay)
                assert 0 == await relay.terminate()

    rejected = ("ci_relay_dead_letters", (("reason", "rejected"),))
    assert (1, 1) == (first[rejected], first[("ci_relay_events_dead_lettered_total", ())])
    assert (1, 0) == (second[rejected], second[("ci_relay_events_dead_lettered_total", ())])
    assert 0 == second[("ci_relay_dead_letters", (("reason", "expired"),))]
    assert 0 == second[("ci_relay_outbox_events", ())]


async def test_every_metric_served_is_documented_and_back(tmp_path: Path) -> None:
    """docs/metrics.md names exactly the ci_relay_ metrics a delivering relay serves."""
    async with (
        FakeIntake(Accept()) as intake,
        aiohttp.ClientSession() as client,
        RelayProcess(relay_config(tmp_path, intake)) as relay,
    ):
        assert 202 == await post(client, relay, orjson.dumps(request(*jobs(1))))
        await intake.wait_for_events(1, timeout_s=10)
        for _ in range(100):  # the last delivery's time follows the 202 by a few ms
            async with client.get(f"http://127.0.0.1:{relay.port}/metrics") as resp:
                text = await resp.text()
            if "ci_relay_last_delivery_timestamp_seconds" in text:
                break
        assert 0 == await relay.terminate()
    served = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("ci_")}
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    documented = {re.sub(r"_total$", "", name) for name in re.findall(r"`(ci_relay_\w+)`", doc)}
    assert documented == served | {"ci_relay_next_expiry_seconds"}  # no pending event: absent


async def test_events_gone_from_the_outbox_are_counted_where_they_went(rig: Rig) -> None:
    """At every turn of the event loop while delivery runs (what a scrape could see), the
    events no longer pending are exactly those counted delivered or dead-lettered."""
    good = jobs(40)
    bad = good.pop(17)
    rig.intake.default = RejectEvents(named(event_id(bad)))
    await rig.put([*good[:17], bad, *good[17:]])
    flusher = rig.flusher(settings=FlusherSettings(batch_max_events=8, flush_interval_s=0))
    collector = RelayCollector(rig.outbox, flusher.snapshot)
    seen: list[tuple[float, float, float, float]] = []

    def look() -> tuple[float, float, float, float]:
        samples = [s for family in collector.collect() for s in family.samples]
        values = {s.name: s.value for s in samples if not s.labels}
        return (
            values["ci_relay_events_accepted_total"],
            values["ci_relay_outbox_events"],
            values["ci_relay_events_delivered_total"],
            values["ci_relay_events_dead_lettered_total"],
        )

    # While this loop spins, the SQLite threads would wait up to seconds for the GIL: the
    # loop's own brief releases keep restarting the timer that forces a hand-over.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(50e-6)
    try:
        async with running(flusher):
            for _ in range(100_000):  # about 20 requests and their acks; ends when all is out
                seen.append(look())
                if seen[-1][1:] == (0, 39, 1):
                    break
                await asyncio.sleep(0)
    finally:
        sys.setswitchinterval(interval)

    assert (40, 0, 39, 1) == seen[-1]
    apart = [s for s in seen if s[0] - s[1] != s[2] + s[3]]
    assert [] == apart[:3], f"{len(apart)} of {len(seen)} looks"
