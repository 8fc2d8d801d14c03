"""Retry now: once the upstream is fixed, `ci-relay retry`, POST /retry or SIGUSR1 make a
relay that waits out a long backoff, or a pause for its key, deliver at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import Accept, FakeIntake, RequireKey, Status
from tests.helpers import JSON, ci_relay, wait_until

KEY = "k" * 32


def _config(tmp_path: Path, intake: FakeIntake) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": intake.url, "api_key": KEY},
        flusher={"flush_interval_s": 0.05, "unauthorized_probe_s": 600.0},
        # The intake asks for a minute (Retry-After): a delivery within seconds comes from
        # the retry.
        retry={"initial_backoff_s": 1.0, "max_backoff_s": 60.0},
    )


async def _post_one(client: aiohttp.ClientSession, relay: RelayProcess) -> None:
    async with client.post(relay.url, data=orjson.dumps(request(event("job"))), headers=JSON) as r:
        assert 202 == r.status


async def _until_retrying(client: aiohttp.ClientSession, relay: RelayProcess) -> None:
    """Until the relay has taken the intake's 503 and backs off (it has seen the answer)."""
    for _ in range(150):
        async with client.get(f"http://127.0.0.1:{relay.port}/status") as answer:
            if (await answer.json())["delivery"]["state"] == "retrying":
                return
        await asyncio.sleep(0.1)
    raise AssertionError("delivery never retrying")


async def test_ci_relay_retry_ends_a_long_backoff_at_once(tmp_path: Path) -> None:
    """Backing off for a minute after a 503, the relay delivers within seconds of
    `ci-relay retry` once the intake is back; the command says what it cut short."""
    async with (
        FakeIntake(Status(503, headers={"Retry-After": "60"})) as intake,
        aiohttp.ClientSession() as client,
    ):
        config = _config(tmp_path, intake)
        async with RelayProcess(config) as relay:
            await _post_one(client, relay)
            await _until_retrying(client, relay)
            where = ("--config", str(config), "--url", f"http://127.0.0.1:{relay.port}")
            shown = await ci_relay("status", *where)
            intake.default = Accept()
            started = time.monotonic()
            ran = await ci_relay("retry", *where)
            await intake.wait_for_events(1, timeout_s=15)
            took = time.monotonic() - started
            await relay.terminate()
    assert 0 == ran.status
    assert ran.stdout.startswith("delivery was retrying, ")
    assert "it tries now" in ran.stdout
    assert took < 30  # the backoff was a minute
    assert "`ci-relay retry` tries at once" in shown.stdout
    assert 1 == len(relay.events("retry asked: delivery tries now"))


async def test_sigusr1_ends_an_unauthorized_pause(tmp_path: Path) -> None:
    """Paused for a refused key (next probe in 10 minutes), the relay probes at once on
    SIGUSR1 and delivers when the key is accepted now."""
    async with (
        FakeIntake(RequireKey("another")) as intake,
        aiohttp.ClientSession() as client,
        RelayProcess(_config(tmp_path, intake)) as relay,
    ):
        await _post_one(client, relay)
        await wait_until(
            lambda: bool(relay.events("upstream refuses the API key; delivery paused")),
            15,
            "delivery paused as unauthorized",
        )
        intake.default = Accept()
        await relay.signal(signal.SIGUSR1)
        await intake.wait_for_events(1, timeout_s=15)
        await wait_until(lambda: bool(relay.events("delivery resumed")), 15, "resumed")
        await relay.terminate()


async def test_post_retry_answers_what_it_did_and_is_bounded(tmp_path: Path) -> None:
    """POST /retry: 202 with the state; asked twice at once, the second does not try again."""
    async with (
        FakeIntake(Status(503, headers={"Retry-After": "60"})) as intake,
        aiohttp.ClientSession() as client,
        RelayProcess(_config(tmp_path, intake)) as relay,
    ):
        await _post_one(client, relay)
        await _until_retrying(client, relay)
        url = f"http://127.0.0.1:{relay.port}/retry"
        answers = []
        for _ in range(2):
            async with client.post(url) as answer:
                answers.append((answer.status, await answer.json()))
        await intake.wait_for_requests(2, timeout_s=15)
        await relay.terminate()
    (first_status, first), (second_status, second) = answers
    assert (202, "retrying", True) == (first_status, first["state"], first["trying"])
    assert 50 < first["cut_wait_s"] <= 60
    assert (202, False) == (second_status, second["trying"])


async def test_retry_without_a_relay_exits_3(tmp_path: Path) -> None:
    """Nothing listening: exit 3 (as status) and one line on stderr."""
    ran = await ci_relay("retry", "--url", "http://127.0.0.1:9")
    assert 3 == ran.status
    assert 1 == len(ran.stderr.splitlines())
    assert ran.stderr.startswith("ci-relay: no relay answers at http://127.0.0.1:9")
