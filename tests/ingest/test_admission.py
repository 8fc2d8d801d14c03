"""The bound on request bodies parsed at once: runners beyond it wait, then get 503."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import orjson

from relay.config import OutboxSettings
from relay.ingest.admission import ParseBudget
from relay.testing.samples import event, request
from tests.helpers import JSON, RunningRelay, serving, wait_until

BODY = orjson.dumps(request(event("pipeline")))


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """The outbox's write lock, held by another connection: commits wait while it is held."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


async def post(relay: RunningRelay) -> tuple[int, str | None, bytes]:
    async with relay.client.post(relay.url, data=BODY, headers=JSON) as response:
        return response.status, response.headers.get("Retry-After"), await response.read()


def stored(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(count)


async def test_a_body_beyond_the_bound_gets_503_with_retry_after_once_its_wait_ends(
    tmp_path: Path,
) -> None:
    """While one body holds the whole budget, the next waits parse_wait_s, then gets 503."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", busy_timeout_s=30)
    budget = ParseBudget(max_bytes=len(BODY) + 100, wait_s=0.2)
    async with serving(settings, parse_budget=budget) as relay:
        with write_lock(settings.path):
            first = asyncio.create_task(post(relay))
            await wait_until(lambda: budget.held > 0, 10, "the first body to be parsed")
            status, retry_after, body = await post(relay)
            assert (503, "7") == (status, retry_after)
            [error] = orjson.loads(body)["errors"]
            assert "503" == error["status"]
            assert "server.max_parsing_bytes" in error["detail"]
        assert (202, None, b"{}") == await first
    assert 1 == stored(settings.path)
    assert 0 == budget.held


async def test_a_body_beyond_the_bound_waits_its_turn_and_is_stored(tmp_path: Path) -> None:
    """A body that does not fit waits, unparsed, until the one before it is stored."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", busy_timeout_s=30)
    budget = ParseBudget(max_bytes=len(BODY) + 100, wait_s=30)
    async with serving(settings, parse_budget=budget) as relay:
        with write_lock(settings.path):
            first = asyncio.create_task(post(relay))
            await wait_until(lambda: budget.held > 0, 10, "the first body to be parsed")
            second = asyncio.create_task(post(relay))
            await wait_until(lambda: budget.waiting == 1, 10, "the second body to wait")
            assert len(BODY) == budget.held
        assert [(202, None, b"{}")] * 2 == list(await asyncio.gather(first, second))
    assert 2 == stored(settings.path)
    assert (0, 0) == (budget.held, budget.waiting)


async def test_a_body_larger_than_the_bound_is_parsed_alone(tmp_path: Path) -> None:
    """A body over the whole budget is not refused: it goes when nothing else is parsed."""
    settings = OutboxSettings(path=tmp_path / "outbox.db")
    budget = ParseBudget(max_bytes=len(BODY) // 2, wait_s=0)
    async with serving(settings, parse_budget=budget) as relay:
        assert (202, None, b"{}") == await post(relay)
    assert 1 == stored(settings.path)
