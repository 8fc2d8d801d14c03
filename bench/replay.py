"""Replay benchmark: runners' answers while many dead letters are replayed beside the relay.

Starts ``ci-relay serve`` (no API key, so nothing leaves the outbox) on an outbox holding N
dead letters, loads it with W clients posting 1-event requests, and meanwhile replays every
dead letter into the outbox. Two ways, each in the same run on a fresh copy of the file:

- ``one-transaction``: the baseline, the whole replay as one write transaction (what a
  single ``INSERT ... SELECT`` / ``DELETE`` does);
- ``chunked``: ``ci-relay dead-letters replay --all``, short transactions with pauses.

For each it reports the replay's duration, the runner requests answered during it, how
many got 503, and their latency (p50, p99, max). ``--runs`` repeats the pair; the table
gives min/median/max over the runs.

    python bench/replay.py [--dead-letters 300000] [--clients 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import event, request

JSON = {"Content-Type": "application/json"}
LOAD_LIMIT_S = 600.0


@dataclass
class Result:
    replay_s: float
    requests: int
    refused: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def make_outbox(directory: Path, dead_letters: int) -> Path:
    """An outbox made by the relay itself, then filled with ``dead_letters`` dead letters."""
    db = directory / "template.db"
    config = write_config(directory / "make.toml", server={"port": 0}, outbox={"path": str(db)})
    asyncio.run(_start_and_stop(config))
    body = orjson.dumps(event("job", name="replayed"))
    with closing(sqlite3.connect(db)) as conn:
        conn.executemany(
            "INSERT INTO dead_letters (event_id, received_at, reason, upstream_status, detail, "
            "attempts, first_failure_at, last_failure_at, body) "
            "VALUES (?, 0, 'upstream_error', 500, 'boom', 5, 0, 0, ?)",
            ((10_000_000 + i, body) for i in range(dead_letters)),
        )
        conn.commit()
    return db


async def _start_and_stop(config: Path) -> None:
    async with RelayProcess(config) as relay:
        await relay.terminate()


def one_transaction(db: Path) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        def replay() -> None:
            with closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO events (received_at, end_at, size, body) "
                    "SELECT ?, end_at, length(body), body FROM dead_letters ORDER BY id",
                    (time.time(),),
                )
                conn.execute("DELETE FROM dead_letters")
                conn.execute("COMMIT")

        await asyncio.to_thread(replay)

    return run


def chunked(config: Path) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        env = relay_free_env()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "dead-letters", "replay", "--all",
            "--config", str(config), stdout=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        assert await proc.wait() == 0

    return run


async def measure(config: Path, clients: int, replay: Callable[[], Awaitable[None]]) -> Result:
    latencies: list[float] = []
    refused = 0
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as session:
        done = asyncio.Event()

        async def client() -> None:
            nonlocal refused
            while not done.is_set():
                body = orjson.dumps(request(event("job", name="live")))
                started = time.perf_counter()
                async with session.post(relay.url, data=body, headers=JSON) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - started)
                refused += resp.status == 503

        load = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(0.5)  # the load is running before the replay starts
        latencies.clear()
        refused = 0
        started = time.perf_counter()
        await asyncio.wait_for(replay(), LOAD_LIMIT_S)
        took = time.perf_counter() - started
        done.set()
        await asyncio.gather(*load)
        await relay.terminate()
    ordered = sorted(latencies)
    return Result(
        took,
        len(ordered),
        refused,
        1000 * ordered[len(ordered) // 2],
        1000 * ordered[int(len(ordered) * 0.99)],
        1000 * ordered[-1],
    )


def spread(values: list[float], fmt: str) -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead-letters", type=int, default=300_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[Result]] = {"one-transaction": [], "chunked": []}
    with tempfile.TemporaryDirectory(prefix="ci-relay-replay-") as tmp:
        directory = Path(tmp)
        template = make_outbox(directory, args.dead_letters)
        db = directory / "outbox.db"
        config = write_config(
            directory / "relay.toml",
            server={"port": 0},
            outbox={"path": str(db)},
        )
        for run in range(args.runs):
            for mode in results:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                shutil.copyfile(template, db)
                replay = one_transaction(db) if mode == "one-transaction" else chunked(config)
                result = asyncio.run(measure(config, args.clients, replay))
                results[mode].append(result)
                print(f"run {run + 1} {mode}: {result}", file=sys.stderr)
    print(
        f"\n{args.dead_letters} dead letters replayed beside a relay loaded by {args.clients} "
        f"clients, {args.runs} runs (min/median/max)\n"
    )
    print("| replay | replay s | runner requests | 503 | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, runs in results.items():
        print(
            f"| {mode} | {spread([r.replay_s for r in runs], '.1f')} "
            f"| {spread([r.requests for r in runs], '.0f')} "
            f"| {spread([r.refused for r in runs], '.0f')} "
            f"| {spread([r.p50_ms for r in runs], '.1f')} "
            f"| {spread([r.p99_ms for r in runs], '.1f')} "
            f"| {spread([r.max_ms for r in runs], '.0f')} |"
        )


if __name__ == "__main__":
    main()
