"""How long one outbox read on the SQLite reader's thread takes while the event loop is busy.

Usage: python bench/gil_handoff.py [--handoffs 10] [--iteration-us 100]

The relay's SQLite work runs on aiosqlite's threads, and each step there needs the GIL
back. CPython hands the GIL to a waiting thread by force only when the holder kept it for
a whole switch interval (5 ms by default); a loop whose iterations are short releases it
briefly around every poll, which restarts that wait, and the thread mostly loses the race
to take it. This script times ``Outbox.oldest_received_at`` (one indexed read, one hand-off
each way) with the loop idle (the baseline, same process) and while a task keeps the loop
turning with ``--iteration-us`` of Python work per turn, for the default loop and uvloop at
several switch intervals, and prints a table. Every cell is bounded by ``--handoffs`` and
by a 30 s timeout per read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop

from relay import log
from relay.config import OutboxSettings
from relay.store.outbox import Outbox

INTERVALS_S = (0.005, 0.001, 0.0002, 0.00005)
READ_TIMEOUT_S = 30.0


def spin_for(seconds: float) -> None:
    """Python work (no GIL release) for about ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def handoff_ms(outbox: Outbox, count: int) -> float:
    """Median milliseconds of ``count`` reads on the reader's thread."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await asyncio.wait_for(outbox.oldest_received_at(), READ_TIMEOUT_S)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(path: Path, count: int, iteration_s: float) -> tuple[float, float]:
    """(idle, busy) median hand-off in ms on a fresh outbox at ``path``."""
    outbox = await Outbox.open(OutboxSettings(path=path))
    try:
        idle = await handoff_ms(outbox, count)
        stop = asyncio.Event()

        async def turn_the_loop() -> None:
            while not stop.is_set():
                spin_for(iteration_s)
                await asyncio.sleep(0)

        spinner = asyncio.create_task(turn_the_loop())
        try:
            busy = await handoff_ms(outbox, count)
        finally:
            stop.set()
            await spinner
        return idle, busy
    finally:
        await outbox.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handoffs", type=int, default=10)
    parser.add_argument("--iteration-us", type=float, default=100.0)
    args = parser.parse_args(argv)
    log.configure("json", "warning")
    loops: dict[str, Callable[[Coroutine[Any, Any, tuple[float, float]]], tuple[float, float]]]
    loops = {"asyncio": asyncio.run, "uvloop": uvloop.run}
    rows = []
    default_interval = sys.getswitchinterval()
    with tempfile.TemporaryDirectory(prefix="gil-handoff-") as tmp:
        for n, (loop, run) in enumerate(loops.items()):
            for i, interval in enumerate(INTERVALS_S):
                sys.setswitchinterval(interval)
                try:
                    path = Path(tmp) / f"outbox-{n}-{i}.db"
                    idle, busy = run(measure(path, args.handoffs, args.iteration_us / 1e6))
                finally:
                    sys.setswitchinterval(default_interval)
                rows.append((loop, interval, idle, busy))
    print(f"\n`gil_handoff.py` ({args.handoffs} reads per cell, {args.iteration_us:g} µs a turn)\n")
    print("| loop | switch interval | idle loop: ms | busy loop: ms | busy / idle |")
    print("|---|---:|---:|---:|---:|")
    for loop, interval, idle, busy in rows:
        print(f"| {loop} | {interval * 1e3:g} ms | {idle:.3f} | {busy:.3f} | {busy / idle:,.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
