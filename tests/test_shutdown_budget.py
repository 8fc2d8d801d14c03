"""SIGTERM: the HTTP drain and the final flush share one budget, flusher.shutdown_grace_s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.contract.intake import PIPELINE_PATH
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import request
from tests.fake_intake import FakeIntake, RejectEvents, Slow
from tests.helpers import API_KEY, JSON, jobs

STOP_TIMEOUT_S = 10.0
"""What docker stop, podman stop and a Kubernetes pod without a grace period give by default."""


async def _stalled_request(port: int) -> asyncio.StreamWriter:
    """A connection whose POST has sent its head and part of its body, and no more."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"data": [')
    await writer.drain()
    return writer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("grace_s", [6.0, None], ids=["grace-6s", "default-grace"])
async def test_sigterm_with_a_request_in_progress_and_a_hung_intake_ends_within_the_budget(
    tmp_path: Path, grace_s: float | None
) -> None:
    """A request still arriving and a batch stuck upstream together end within the grace
    (the default within a 10 s stop timeout), exit 0, and keep every accepted event."""
    seen = asyncio.Event()

    def tap(_: dict[str, Any]) -> bool:
        seen.set()
        return False

    async with FakeIntake(default=Slow(120, then=RejectEvents(tap))) as intake:
        flusher: dict[str, Any] = {"flush_interval_s": 0.05}
        if grace_s is not None:
            flusher["shutdown_grace_s"] = grace_s
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(tmp_path / "outbox.db")},
            upstream={"url": intake.url, "api_key": API_KEY},
            flusher=flusher,
        )
        items = jobs(5, "kept")
        async with RelayProcess(config) as relay, aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{relay.port}"
            body = orjson.dumps(request(*items))
            async with session.post(relay.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
            await asyncio.wait_for(seen.wait(), 10)  # the batch is in flight, and hangs
            stalled = await _stalled_request(relay.port)
            # A later request answered means the stalled one's head was read before it.
            async with session.get(f"{base}/health") as resp:
                assert 200 == resp.status
            sent_at = time.monotonic()
            assert 0 == await relay.terminate(timeout_s=40)
            took_s = time.monotonic() - sent_at
            stalled.close()

    budget_s = STOP_TIMEOUT_S if grace_s is None else grace_s + 0.75
    assert took_s < budget_s, f"SIGTERM took {took_s:.2f} s, budget {budget_s} s"
    (stopped,) = relay.events("stopped")
    assert (5, 0, 5) == (stopped["accepted"], stopped["delivered"], stopped["pending"])
