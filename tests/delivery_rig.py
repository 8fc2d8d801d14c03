"""A real outbox on a temporary file and a fake intake on loopback, for delivery tests.

The ``intake`` and ``rig`` fixtures (in conftest.py) build these; the helpers make events
of known names and sizes.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from relay.config import FlusherSettings, RetrySettings, UpstreamSettings
from relay.flusher import Flusher
from relay.outbox import Outbox
from relay.samples import event, request
from relay.schema import parse_request
from relay.upstream import Upstream
from tests.fake_intake import FakeIntake

API_KEY = "test-key"
HOUR = 3600.0
EMPTY_BODY_BYTES = len(b'{"data":[]}')


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


def jobs(n: int, prefix: str = "job") -> list[dict[str, Any]]:
    """``n`` finished job events, each with its own id and name (equal lengths, so equal sizes)."""
    return [event("job", id=f"{prefix}-{i:05d}", name=f"{prefix}-{i:05d}") for i in range(n)]


def big_job(name: str, size: int) -> dict[str, Any]:
    """A job event whose stored JSON is longer than ``size`` bytes."""
    return event("job", id=name, name=name, parameters={"blob": "x" * size})


def stored(events: Sequence[dict[str, Any]]) -> list[bytes]:
    """The events' JSON as the outbox stores it."""
    return [accepted.body for accepted in parse_request(orjson.dumps(request(*events)))]


def body_len(events: Sequence[dict[str, Any]]) -> int:
    """The length of the request body the relay sends for ``events``."""
    return len(wire_body(events))


def wire_body(events: Sequence[dict[str, Any]]) -> bytes:
    """The request body the relay must send for ``events``, written out independently."""
    return b'{"data":[' + b",".join(stored(events)) + b"]}"


def ahead(seconds: float) -> Callable[[], float]:
    """A clock ``seconds`` ahead of the real one."""
    return lambda: time.time() + seconds


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
