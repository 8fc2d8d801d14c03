"""A dry run (`ci-relay serve --dry-run`, upstream.enabled = false): events are validated,
kept in the recent history as not sent, and nothing reaches the upstream."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import orjson

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import Accept, FakeIntake
from tests.helpers import JSON


def _fates(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [fate for (fate,) in db.execute("SELECT fate FROM history ORDER BY seq")]


async def test_a_dry_run_keeps_and_settles_events_and_sends_nothing(tmp_path: Path) -> None:
    """No key, an upstream configured: events answered 202, settled as not sent, the
    upstream never asked; the start line says it is a dry run."""
    async with FakeIntake(Accept()) as intake, aiohttp.ClientSession() as client:
        config = write_config(
            tmp_path / "relay.toml",
            server={"port": 0},
            outbox={"path": str(tmp_path / "outbox.db")},
            upstream={"url": intake.url},
            flusher={"flush_interval_s": 0.05},
        )
        relay = RelayProcess(config, arguments=("--dry-run",))
        async with relay as running:
            body = orjson.dumps(request(event("pipeline"), event("job")))
            async with client.post(running.url, data=body, headers=JSON) as answer:
                assert 202 == answer.status
            for _ in range(100):
                if len(_fates(tmp_path / "outbox.db")) == 2:
                    break
                await asyncio.sleep(0.05)
            await running.terminate()
    assert ["not_sent", "not_sent"] == _fates(tmp_path / "outbox.db")
    assert [] == intake.received
    (listening,) = relay.events("listening")
    assert "nothing is sent" in listening["dry_run"]
    assert "nowhere (dry run)" == listening["upstream"]
