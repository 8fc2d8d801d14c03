"""The outbox shared with other processes: a replay or a held lock never stops the relay.

The relay runs as a real subprocess with no API key, so every accepted event stays in the
file where the test can see the order in which the commits landed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import aiohttp
import orjson

from relay.store import queries
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.helpers import ci_relay

JSON = {"Content-Type": "application/json"}
DEAD_LETTERS = 60_000
CLI_TIMEOUT_S = 90.0
MAX_POSTS = 5_000


def config_for(tmp_path: Path, **outbox: object) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db"), "retry_after_s": 3, **outbox},
    )


def add_dead_letters(db: Path, count: int) -> None:
    """``count`` dead letters written straight into the outbox file by the flusher's statements."""
    body = orjson.dumps(event("job", name="replayed"))
    with closing(sqlite3.connect(db, timeout=10, isolation_level=None)) as conn:
        # One transaction: the running daemon never sees these rows as pending events.
        conn.execute(queries.BEGIN_WRITE)
        (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        conn.executemany(queries.APPEND, [(0.0, None, len(body), body)] * count)
        ids = queries.json_ids(
            i for (i,) in conn.execute("SELECT id FROM events WHERE id > ?", (last,))
        )
        conn.execute(queries.TO_DEAD_LETTERS, ("upstream_error", 500, "boom", 1, 0.0, 0.0, ids))
        conn.execute(queries.DELETE_EVENTS, (ids,))
        conn.execute("COMMIT")


async def replay_all(config: Path) -> tuple[int, str]:
    """``ci-relay dead-letters replay --all`` as a subprocess: its status and output."""
    ran = await ci_relay(
        "dead-letters", "replay", "--all", "--config", str(config), timeout_s=CLI_TIMEOUT_S
    )
    return ran.status, ran.stdout + ran.stderr


async def post_until(url: str, done: asyncio.Task[tuple[int, str]]) -> Counter[int]:
    """POST one-event requests back to back until ``done`` finishes (bounded by MAX_POSTS)."""
    statuses: Counter[int] = Counter()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        for _ in range(MAX_POSTS):
            if done.done():
                break
            body = orjson.dumps(request(event("job", name="live")))
            async with client.post(url, data=body, headers=JSON) as resp:
                await resp.read()
                statuses[resp.status] += 1
    return statuses


def names_by_id(db: Path) -> list[str]:
    """The job name of each event in the outbox, in id (commit) order."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT body FROM events ORDER BY id")
        return [orjson.loads(row[0])["attributes"]["resource"]["name"] for row in rows]


async def test_replay_of_many_dead_letters_interleaves_with_runner_commits(tmp_path: Path) -> None:
    """A replay beside a loaded relay commits in chunks: runners' events land between, no 503."""
    config = config_for(tmp_path)
    db = tmp_path / "outbox.db"
    async with RelayProcess(config) as relay:
        add_dead_letters(db, DEAD_LETTERS)
        replay = asyncio.create_task(replay_all(config))
        statuses = await post_until(relay.url, replay)
        status, output = await replay
        assert 0 == await relay.terminate()

    assert (0, f"replayed {DEAD_LETTERS} dead letter(s) into the outbox\n") == (status, output)
    assert {202} == set(statuses), statuses
    names = names_by_id(db)
    replayed = [i for i, name in enumerate(names) if name == "replayed"]
    live_between = sum(1 for name in names[replayed[0] : replayed[-1]] if name == "live")
    print(f"\n{statuses[202]} runner requests during the replay, {live_between} between its chunks")
    assert DEAD_LETTERS == len(replayed)
    assert live_between >= 2, "the replay held the write lock from its first row to its last"


async def test_a_lock_held_elsewhere_gives_503_with_retry_after_and_the_relay_lives(
    tmp_path: Path,
) -> None:
    """While another process holds the write lock runners get 503 + Retry-After; then 202 again."""
    config = config_for(tmp_path, busy_timeout_s=0.3)
    db = tmp_path / "outbox.db"
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        holder = sqlite3.connect(db, timeout=10, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 3.0  # past the relay's once-a-second recount, twice
        while time.monotonic() < deadline:
            body = orjson.dumps(request(event("job")))
            async with client.post(relay.url, data=body, headers=JSON) as resp:
                answers.append((resp.status, resp.headers.get("Retry-After")))
        holder.execute("ROLLBACK")
        holder.close()
        async with client.post(
            relay.url, data=orjson.dumps(request(event("job"))), headers=JSON
        ) as resp:
            after = resp.status
        assert 0 == await relay.terminate()

    assert {(503, "3")} == set(answers)
    assert 202 == after
    assert ([], 1) == (relay.events("task died"), len(relay.events("stopped")))
