"""A real outbox on a temporary file and a fake intake on loopback, for delivery tests.

The ``intake`` and ``rig`` fixtures (in conftest.py) build these.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from relay.config import FlusherSettings, RetrySettings, UpstreamSettings
from relay.contract.schema import parse_request
from relay.delivery.flusher import Flusher
from relay.delivery.upstream import Upstream
from relay.store.outbox import Outbox
from relay.testing.samples import request
from tests.fake_intake import FakeIntake
from tests.helpers import API_KEY


@asynccontextmanager
async def running(flusher: Flusher) -> AsyncIterator[None]:
    """``flusher.run()`` as a task for the block, stopped and awaited (5 s at most) at its end."""
    task = asyncio.create_task(flusher.run())
    try:
        yield
    finally:
        flusher.stop()
        await asyncio.wait_for(task, timeout=5)


@dataclass(frozen=True)
class DeadLetter:
    """A row of the dead_letters table, with its event decoded."""

    reason: str
    upstream_status: int | None
    detail: str
    event: dict[str, Any]


@dataclass
class Rig:
    """A real outbox on a temporary file, a fake intake, and the upstream clients made for it."""

    intake: FakeIntake
    outbox: Outbox
    db: Path
    upstreams: list[Upstream] = field(default_factory=list)

    def upstream(
        self,
        *,
        url: str | None = None,
        api_key: str | None = API_KEY,
        compress: bool = False,
        request_timeout_s: float = 30.0,
    ) -> Upstream:
        """An Upstream to the fake intake (or ``url``), closed after the test."""
        settings = UpstreamSettings(
            url=url or self.intake.url,
            api_key=None if api_key is None else SecretStr(api_key),
            compress=compress,
            request_timeout_s=request_timeout_s,
        )
        client = Upstream(settings)
        self.upstreams.append(client)
        return client

    def flusher(
        self,
        upstream: Upstream | None = None,
        *,
        settings: FlusherSettings | None = None,
        retry: RetrySettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Flusher:
        """A Flusher on this rig's outbox, sending to ``upstream`` (default: the fake intake)."""
        return Flusher(
            self.outbox,
            upstream or self.upstream(),
            settings or FlusherSettings(),
            retry or RetrySettings(),
            clock,
        )

    async def put(self, events: Sequence[dict[str, Any]]) -> None:
        """Append ``events`` to the outbox as the server would, in requests of at most 1000."""
        for start in range(0, len(events), 1000):
            chunk = events[start : start + 1000]
            await self.outbox.append(parse_request(orjson.dumps(request(*chunk))))

    async def pending(self) -> list[dict[str, Any]]:
        """Every event still in the outbox, oldest first, decoded."""
        batch = await self.outbox.next_batch(1000, 1 << 40)
        return [orjson.loads(e.body) for e in batch]

    def attempts(self) -> list[int]:
        """The ``attempts`` column of every event still in the outbox, oldest first."""
        with closing(sqlite3.connect(self.db)) as conn:
            return [row[0] for row in conn.execute("SELECT attempts FROM events ORDER BY id")]

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, in the order they were written."""
        query = "SELECT reason, upstream_status, detail, body FROM dead_letters ORDER BY id"
        with closing(sqlite3.connect(self.db)) as conn:
            return [
                DeadLetter(reason, status, detail, orjson.loads(body))
                for reason, status, detail, body in conn.execute(query)
            ]
