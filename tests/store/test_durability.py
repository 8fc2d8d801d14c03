"""The daemon as a real subprocess: every 202 survives SIGKILL, SIGTERM and a restart."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request

JSON = {"Content-Type": "application/json"}
KINDS = ("pipeline", "running_pipeline", "stage", "job", "running_job", "step")
TOTAL_REQUESTS = 300
WORKERS = 20
# The whole load, kill included, must be over by then.
LOAD_TIMEOUT_S = 30.0


def event_id(item: dict[str, Any]) -> str:
    """The unique id of an event: a pipeline's unique_id, any other level's id."""
    resource = item["attributes"]["resource"]
    return str(resource.get("unique_id") or resource["id"])


def stored_ids(path: Path) -> list[str]:
    """The ids of the events in the outbox file, read after its daemon has exited."""
    db = sqlite3.connect(path)
    try:
        return [event_id(orjson.loads(row[0])) for row in db.execute("SELECT body FROM events")]
    finally:
        db.close()


def config_for(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        flusher={"shutdown_grace_s": 5.0},
    )


class Load:
    """Bounded concurrent traffic: ``total`` requests of 1-5 events from ``workers`` tasks.

    ``reached`` is set once ``threshold`` requests were answered 202. A worker stops at its
    first transport error (the daemon is gone or going), so the load ends by itself.
    """

    def __init__(self, url: str, threshold: int, total: int = TOTAL_REQUESTS) -> None:
        self.url = url
        self.threshold = threshold
        self.pending: deque[tuple[list[str], bytes]] = deque()
        for _ in range(total):
            events = [event(random.choice(KINDS)) for _ in range(random.randint(1, 5))]
            self.pending.append(([event_id(e) for e in events], orjson.dumps(request(*events))))
        self.acked: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.unanswered = 0
        self.reached = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(WORKERS)))

    async def _worker(self, client: aiohttp.ClientSession) -> None:
        while self.pending:
            ids, body = self.pending.popleft()
            try:
                async with client.post(self.url, data=body, headers=JSON) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                self.unanswered += 1
                return
            self.statuses[status] += 1
            if status == 202:
                self.acked.update(ids)
                if self.statuses[202] >= self.threshold:
                    self.reached.set()

    async def until_reached(self, task: asyncio.Task[None]) -> None:
        """Wait until ``threshold`` 202s were answered (or the load ended without them)."""
        waiter = asyncio.create_task(self.reached.wait())
        await asyncio.wait(
            {waiter, task}, timeout=LOAD_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        assert self.reached.is_set(), f"only {self.statuses} answers before the deadline"


async def test_sigkill_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    """After SIGKILL mid-load, every event of a request answered 202 is in the outbox file."""
    config = config_for(tmp_path)
    async with RelayProcess(config) as relay:
        load = Load(relay.url, threshold=random.randint(100, 200))
        traffic = asyncio.create_task(load.run())
        await load.until_reached(traffic)
        await asyncio.sleep(random.uniform(0, 0.02))  # a random moment, requests in flight
        status = await relay.kill()
        await asyncio.wait_for(traffic, LOAD_TIMEOUT_S)
    assert -9 == status
    assert load.statuses[202] < TOTAL_REQUESTS, "the kill came after the load was over"
    assert set() == load.acked - set(stored_ids(tmp_path / "outbox.db"))


async def test_sigterm_with_requests_in_flight(tmp_path: Path) -> None:
    """SIGTERM mid-load exits 0 after logging stopping/stopped; every 202 is kept on disk."""
    config = config_for(tmp_path)
    async with RelayProcess(config) as relay:
        load = Load(relay.url, threshold=random.randint(50, 150))
        traffic = asyncio.create_task(load.run())
        await load.until_reached(traffic)
        status = await relay.terminate()
        await asyncio.wait_for(traffic, LOAD_TIMEOUT_S)
    assert 0 == status
    assert (1, 1) == (len(relay.events("stopping")), len(relay.events("stopped")))
    assert set() == set(load.statuses) - {202, 503}, load.statuses
    async with RelayProcess(config) as restarted:
        pending = restarted.events("listening")[0]["pending_events"]
        assert 0 == await restarted.terminate()
    stored = stored_ids(tmp_path / "outbox.db")
    assert set() == load.acked - set(stored)
    assert len(stored) == pending


async def test_restart_reports_pending_events(tmp_path: Path) -> None:
    """A second daemon on the same outbox file reports the pending events when listening."""
    config = config_for(tmp_path)
    sizes = [1, 3, 5, 2]
    async with RelayProcess(config) as first, aiohttp.ClientSession() as client:
        for size in sizes:
            body = orjson.dumps(request(*(event("job") for _ in range(size))))
            async with client.post(first.url, data=body, headers=JSON) as resp:
                assert 202 == resp.status
        assert -9 == await first.kill()
    async with RelayProcess(config) as second:
        listening = second.events("listening")
        assert 0 == await second.terminate()
    assert [sum(sizes)] == [entry["pending_events"] for entry in listening]
    assert sum(sizes) == second.events("stopped")[0]["pending"]


async def test_a_relay_that_exits_before_listening_is_reported_with_its_logs(
    tmp_path: Path,
) -> None:
    """RelayProcess says the relay did not start, with its last lines, whenever it exits."""
    (tmp_path / "outbox.db").write_bytes(b"not an outbox " * 100)
    for _ in range(5):  # the exit races the loop's reaping of the child: try it a few times
        with pytest.raises(RuntimeError, match="relay did not start"):
            await RelayProcess(config_for(tmp_path)).start()
