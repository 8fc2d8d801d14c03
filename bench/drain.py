"""Drain benchmark: how fast the relay empties a backlog into an always-202 local intake.

Fills an outbox with N events, then starts ``ci-relay serve`` on it with ``upstream.url``
pointing at an intake served by this script on 127.0.0.1, and times the drain. The
baseline, in the same run, is this script posting the same 1000-event bodies to the same
intake straight from memory, with no outbox: the most any relay could achieve here.

    python bench/drain.py [--events 200000] [--json results.json]

Two memory scenarios follow, each the relay's peak RSS against the same 150 MB target:
a backlog of 300 events of 3 MiB each (a batch must never load more than its byte cap),
and an intake whose first answers are 503s carrying a 1 MiB gzip body that inflates to
1 GiB (an answer must be read at most 64 KiB, decompressed).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import OutboxSettings
from relay.contract.intake import request_body
from relay.contract.schema import parse_request
from relay.store.outbox import Outbox
from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request

TARGET_EVENTS_PER_S = 30_000
TARGET_RSS_MB = 150
TIMEOUT_S = 600.0


LARGE_EVENTS = 300
LARGE_EVENT_BYTES = 3 * 1024 * 1024
BOMB_ANSWERS = 3
BOMB_INFLATED_BYTES = 1024 * 1024 * 1024
BOMB_EVENTS = 10_000


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of about inflated/1000 bytes that inflates to ``inflated`` zero bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join([*parts, packer.flush()])


class CountingIntake:
    """A lean intake: answers 202 and counts requests and events (no per-event parsing).

    ``fail_first(n, body)`` makes the next n requests 503s with ``body`` as gzip.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.events = 0
        self.max_batch = 0
        self.target = 0
        self.done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._failures = 0
        self._failure_body = b""

    def fail_first(self, n: int, gzip_body: bytes) -> None:
        self._failures, self._failure_body = n, gzip_body

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self._failures:
            self._failures -= 1
            headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
            return web.Response(status=503, body=self._failure_body, headers=headers)
        count = len(orjson.loads(body)["data"])
        self.requests += 1
        self.events += count
        self.max_batch = max(self.max_batch, count)
        if self.target and self.events >= self.target:
            self.done.set()
        return web.Response(status=202, body=b"{}", content_type="application/json")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/api/v2/ci/pipeline", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def reset(self, target: int) -> None:
        self.requests = self.events = self.max_batch = 0
        self.target = target
        self.done = asyncio.Event()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    requests: int
    max_batch: int
    peak_rss_mb: float | None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def large_events(n: int, size: int) -> list[bytes]:
    """N valid job events (stored form) of a little over ``size`` bytes each."""
    blob = "x" * size
    return [
        parse_request(orjson.dumps(request(event("job", parameters={"blob": blob}))))[0].body
        for _ in range(n)
    ]


def sample_events(n: int) -> list[bytes]:
    """N valid events (stored form), cycling through every level."""
    kinds = ["pipeline", "stage", "job", "step", "running_job", "running_pipeline"]
    unique = [parse_request(orjson.dumps(request(event(k))))[0] for k in kinds * 50]
    return [unique[i % len(unique)].body for i in range(n)]


# The drain with the recent history kept, against the same drain without: at least this much.
HISTORY_MAX_COST = 0.90


async def fill_outbox(path: Path, bodies: list[bytes]) -> None:
    outbox = await Outbox.open(OutboxSettings(path=path, synchronous="NORMAL"))
    try:
        step = 1000 if max(map(len, bodies), default=0) < 1_000_000 else 1
        for start in range(0, len(bodies), step):
            chunk = [
                orjson.dumps(request(*[orjson.loads(b) for b in bodies[start : start + step]]))
            ]
            await outbox.append(parse_request(chunk[0]))
    finally:
        await outbox.close()


async def baseline(intake: CountingIntake, bodies: list[bytes]) -> Result:
    """The same batches posted from memory, one at a time, like the flusher does."""
    intake.reset(len(bodies))
    batches = [request_body(bodies[i : i + 1000]) for i in range(0, len(bodies), 1000)]
    headers = {"Content-Type": "application/json", "DD-API-KEY": "bench"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as client:
        for body in batches:
            async with client.post(
                intake.url + "/api/v2/ci/pipeline", data=body, headers=headers
            ) as r:
                await r.read()
    seconds = time.perf_counter() - started
    return Result(
        "baseline: POST from memory",
        intake.events,
        seconds,
        intake.requests,
        intake.max_batch,
        None,
    )


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


async def relay_drain(
    intake: CountingIntake,
    workdir: Path,
    bodies: list[bytes],
    name: str = "ci-relay: drain outbox",
    history: bool = True,
) -> Result:
    workdir.mkdir(exist_ok=True)  # noqa: ASYNC240 (a benchmark's set-up, before any timing)
    outbox_path = workdir / "outbox.db"
    await fill_outbox(outbox_path, bodies)
    intake.reset(len(bodies))
    config = write_config(
        workdir / "relay.toml",
        server={"port": 0},
        outbox={"path": str(outbox_path)},
        upstream={"url": intake.url, "api_key": "bench-key"},
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2},
        # Without a history, each delivered batch leaves no record (the code before it).
        history={"max_events": len(bodies) if history else 0},
        log={"level": "info", "format": "json"},
    )
    relay = RelayProcess(config)
    started = time.perf_counter()
    await relay.start()
    try:
        await asyncio.wait_for(intake.done.wait(), TIMEOUT_S)
        seconds = time.perf_counter() - started
        rss = peak_rss_mb(relay.pid)
    finally:
        await relay.terminate()
    return Result(name, intake.events, seconds, intake.requests, intake.max_batch, rss)


def remaining(outbox_path: Path) -> int:
    with sqlite3.connect(outbox_path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def memory_table(results: list[Result]) -> str:
    lines = [
        "| memory scenario | events | requests answered 202 | seconds | peak RSS MB | < 150 MB |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rss = r.peak_rss_mb
        ok = "PASS" if rss is not None and rss < TARGET_RSS_MB else "FAIL"
        shown = f"{rss:.0f}" if rss is not None else "-"
        lines.append(f"| {r.name} | {r.events} | {r.requests} | {r.seconds:.2f} | {shown} | {ok} |")
    return "\n".join(lines)


async def memory_scenarios(intake: CountingIntake) -> list[Result]:
    """Large events, then gzip-bomb error answers, each drained by a fresh relay."""
    results = []
    with tempfile.TemporaryDirectory(prefix="ci-relay-drain-large-") as tmp:
        bodies = large_events(LARGE_EVENTS, LARGE_EVENT_BYTES)
        name = f"{LARGE_EVENTS} events of {LARGE_EVENT_BYTES >> 20} MiB"
        results.append(await relay_drain(intake, Path(tmp), bodies, name))
        del bodies
    with tempfile.TemporaryDirectory(prefix="ci-relay-drain-bomb-") as tmp:
        bomb = gzip_bomb(BOMB_INFLATED_BYTES)
        name = (
            f"first {BOMB_ANSWERS} answers: 503 with {len(bomb) >> 10} KiB gzip "
            f"inflating to {BOMB_INFLATED_BYTES >> 30} GiB"
        )
        bodies = sample_events(BOMB_EVENTS)
        intake.fail_first(BOMB_ANSWERS, bomb)
        results.append(await relay_drain(intake, Path(tmp), bodies, name))
    return results


def _history_ratio(results: list[Result]) -> float:
    """The drain rate with the history over the rate without, two runs of each (the table's
    rows 2-3 without, 4-5 with)."""
    without = results[1].events_per_s + results[2].events_per_s
    return (results[3].events_per_s + results[4].events_per_s) / without


def table(results: list[Result], n: int) -> str:
    base = results[0].events_per_s
    lines = [
        "| run | events | seconds | events/s | ratio to baseline | requests | largest batch"
        " | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        lines.append(
            f"| {r.name} | {r.events} | {r.seconds:.2f} | {r.events_per_s:,.0f} | "
            f"{r.events_per_s / base:.2f} | {r.requests} | {r.max_batch} | {rss} |"
        )
    relay = results[-1]
    expected_requests = math.ceil(n / 1000)
    checks = [
        ("drain rate >= 30,000 events/s", relay.events_per_s >= TARGET_EVENTS_PER_S),
        (
            "the history costs at most 10% of the drain rate (with / without, both runs "
            f"each: {_history_ratio(results):.2f} >= 0.90)",
            _history_ratio(results) >= HISTORY_MAX_COST,
        ),
        (
            f"upstream requests == ceil(N/1000) = {expected_requests}",
            relay.requests == expected_requests,
        ),
        ("peak RSS < 150 MB", relay.peak_rss_mb is not None and relay.peak_rss_mb < TARGET_RSS_MB),
    ]
    lines.append("")
    lines += [f"- {name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--skip-memory", action="store_true", help="skip the large-event and gzip-bomb runs"
    )
    args = parser.parse_args()

    bodies = sample_events(args.events)
    intake = CountingIntake()
    await intake.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ci-relay-drain-") as tmp:
            base = await baseline(intake, bodies)
            # With and without the history in the order A B B A, so that neither gains from
            # running first or last on a machine whose load drifts.
            without = "ci-relay: drain outbox, no history"
            bare = await relay_drain(intake, Path(tmp) / "bare", bodies, without, False)
            relay = await relay_drain(intake, Path(tmp) / "history", bodies)
            left = remaining(Path(tmp) / "history" / "outbox.db")
            relay_2 = await relay_drain(intake, Path(tmp) / "history-2", bodies)
            bare_2 = await relay_drain(intake, Path(tmp) / "bare-2", bodies, without, False)
        memory = [] if args.skip_memory else await memory_scenarios(intake)
    finally:
        await intake.close()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.machine()}; N = {args.events}; command: {' '.join(sys.argv)}"
    )
    print(table([base, bare, bare_2, relay_2, relay], args.events))
    print(f"- events left in the outbox after the drain: {left}")
    if memory:
        print()
        print(memory_table(memory))
    if args.json:
        runs = [base, bare, relay, relay_2, bare_2, *memory]
        args.json.write_text(orjson.dumps([asdict(r) for r in runs]).decode())
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(asyncio.run(main()))
