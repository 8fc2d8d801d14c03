"""Drain benchmark: how fast the relay empties a backlog into an always-202 local intake.

Fills an outbox with N events, then starts ``ci-relay serve`` on it with ``upstream.url``
pointing at an intake served by this script on 127.0.0.1, and times the drain. The
baseline, in the same run, is this script posting the same 1000-event bodies to the same
intake straight from memory, with no outbox: the most any relay could achieve here.

    python bench/drain.py [--events 200000] [--json results.json]
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
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import OutboxSettings
from relay.outbox import Outbox
from relay.schema import parse_request
from relay.upstream import request_body
from tests.daemon import RelayProcess, write_config
from tests.events import event, request

TARGET_EVENTS_PER_S = 30_000
TARGET_RSS_MB = 150
TIMEOUT_S = 600.0


class CountingIntake:
    """A lean intake: answers 202 and counts requests and events (no per-event parsing)."""

    def __init__(self) -> None:
        self.requests = 0
        self.events = 0
        self.max_batch = 0
        self.target = 0
        self.done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
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


def sample_events(n: int) -> list[bytes]:
    """N valid events (stored form), cycling through every level."""
    kinds = ["pipeline", "stage", "job", "step", "running_job", "running_pipeline"]
    unique = [parse_request(orjson.dumps(request(event(k))))[0] for k in kinds * 50]
    return [unique[i % len(unique)].body for i in range(n)]


async def fill_outbox(path: Path, bodies: list[bytes]) -> None:
    outbox = await Outbox.open(OutboxSettings(path=path, synchronous="NORMAL"))
    try:
        for start in range(0, len(bodies), 1000):
            chunk = [
                orjson.dumps(request(*[orjson.loads(b) for b in bodies[start : start + 1000]]))
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


async def relay_drain(intake: CountingIntake, workdir: Path, bodies: list[bytes]) -> Result:
    outbox_path = workdir / "outbox.db"
    await fill_outbox(outbox_path, bodies)
    intake.reset(len(bodies))
    config = write_config(
        workdir / "relay.toml",
        server={"port": 0},
        outbox={"path": str(outbox_path)},
        upstream={"url": intake.url, "api_key": "bench-key"},
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
    return Result(
        "ci-relay: drain outbox", intake.events, seconds, intake.requests, intake.max_batch, rss
    )


def remaining(outbox_path: Path) -> int:
    with sqlite3.connect(outbox_path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


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
    args = parser.parse_args()

    bodies = sample_events(args.events)
    intake = CountingIntake()
    await intake.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ci-relay-drain-") as tmp:
            base = await baseline(intake, bodies)
            relay = await relay_drain(intake, Path(tmp), bodies)
            left = remaining(Path(tmp) / "outbox.db")
    finally:
        await intake.close()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.machine()}; N = {args.events}; command: {' '.join(sys.argv)}"
    )
    print(table([base, relay], args.events))
    print(f"- events left in the outbox after the drain: {left}")
    if args.json:
        args.json.write_text(orjson.dumps([asdict(base), asdict(relay)]).decode())
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(asyncio.run(main()))
