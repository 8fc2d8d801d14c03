"""Cost of the connection guard: a no-op server with aiohttp's runner against the same
server with the relay's guarded runner (byte counts, read deadlines, the connection bound).

    python bench/connections.py [--runs 5] [--duration 5] [--slow 300]

Both servers answer ``POST /api/v2/ci/pipeline`` with 202 after reading the body and do
nothing else, so the difference is the guard alone. Each run starts each server fresh (in
alternating order), loads it with wrk (one thread, 50 keep-alive connections,
``bench/post.lua`` with a 1-event body) for a warm-up then ``--duration`` seconds, and
records requests/s and the server's CPU time per request (from /proc, less sensitive than
the rate to other load on a shared machine); with ``--slow N`` the script also holds N
connections that trickle a request head (one byte every 0.5 s) during the measured run.
wrk runs on one CPU and the server on the other when there are two. Prints min/median/max
across runs of each figure and of the guarded/baseline ratio.

Internal mode, used by the above: ``python bench/connections.py --serve plain|guarded``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.app import app_runner as guarded_runner  # noqa: E402
from relay.contract.intake import PIPELINE_PATH  # noqa: E402
from relay.testing.samples import event, request  # noqa: E402

WARMUP_S = 2
SLOW_HEAD = f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()


async def _accept(req: web.Request) -> web.Response:
    await req.read()
    return web.Response(status=202, body=b"{}", content_type="application/json")


async def _serve(mode: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    app = web.Application(client_max_size=5 * 1024 * 1024)
    app.router.add_post(PIPELINE_PATH, _accept)
    if mode == "guarded":
        runner: web.AppRunner = guarded_runner(app)
    else:
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await stop.wait()
    await runner.cleanup()


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else (None, None)


def _start_server(mode: str, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode],
        stdout=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, duration_s: int, body: Path, cpus: set[int] | None) -> tuple[float, int]:
    argv = ["wrk", "-t1", "-c50", f"-d{duration_s}s", "-s", str(ROOT / "bench" / "post.lua")]
    argv += [f"http://127.0.0.1:{port}{PIPELINE_PATH}", "--", str(body)]
    out = subprocess.run(
        argv,
        capture_output=True,
        check=True,
        timeout=duration_s + 30,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ).stdout.decode()
    match = re.search(r"BENCH_RESULT (\{.*\})", out)
    assert match is not None, out
    result = orjson.loads(match[1])
    if result["refused"] or result["accepted"] == 0:
        raise RuntimeError(f"unexpected answers: {result}")
    return float(result["requests"] / (result["duration_us"] / 1e6)), int(result["requests"])


async def _hold_slow(port: int, count: int, seconds: float) -> int:
    """Open ``count`` connections trickling a head for ``seconds``; how many got through."""
    writers: list[asyncio.StreamWriter] = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(SLOW_HEAD)
            writers.append(writer)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"a")
        await asyncio.sleep(0.5)
    for writer in writers:
        writer.close()
    return len(writers)


def _measure(mode: str, args: argparse.Namespace, body: Path) -> tuple[float, float]:
    """Requests/s, and the server's CPU microseconds per request, of one measured run."""
    server_cpus, wrk_cpus = _cpus()
    proc, port = _start_server(mode, server_cpus)
    holder: threading.Thread | None = None
    try:
        _wrk(port, WARMUP_S, body, wrk_cpus)
        if args.slow:
            slow = _hold_slow(port, args.slow, args.duration + 1)
            holder = threading.Thread(target=asyncio.run, args=(slow,))
            holder.start()
            time.sleep(0.5)  # the slow connections are open before the measured run
        cpu_before = _cpu_s(proc.pid)
        rate, requests = _wrk(port, args.duration, body, wrk_cpus)
        cpu_us = (_cpu_s(proc.pid) - cpu_before) * 1e6 / requests
        return rate, cpu_us
    finally:
        if holder is not None:
            holder.join(timeout=args.duration + 10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):,.2f} / {statistics.median(values):,.2f} / {max(values):,.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["plain", "guarded"], help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--slow", type=int, default=0, help="slow connections held meanwhile")
    args = parser.parse_args(argv)
    if args.serve:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_serve(args.serve))
        else:
            uvloop.run(_serve(args.serve))
        return 0

    rates: dict[str, list[float]] = {"plain": [], "guarded": []}
    cpu: dict[str, list[float]] = {"plain": [], "guarded": []}
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(orjson.dumps(request(event("pipeline"))))
        for run in range(args.runs):
            order = ("plain", "guarded") if run % 2 == 0 else ("guarded", "plain")
            for mode in order:
                rate, cpu_us = _measure(mode, args, body)
                rates[mode].append(rate)
                cpu[mode].append(cpu_us)
    ratios = [g / p for g, p in zip(rates["guarded"], rates["plain"], strict=True)]
    cpu_ratios = [g / p for g, p in zip(cpu["guarded"], cpu["plain"], strict=True)]
    print(f"{args.runs} runs of {args.duration} s, wrk -t1 -c50, 1-event POST, slow={args.slow}")
    print()
    print("min / median / max across runs; the ratio is taken per run, guarded / baseline")
    print()
    print("| server | req/s | server CPU µs per request |")
    print("|---|---:|---:|")
    print(f"| aiohttp AppRunner (baseline) | {_spread(rates['plain'])} | {_spread(cpu['plain'])} |")
    guarded = f"{_spread(rates['guarded'])} | {_spread(cpu['guarded'])}"
    print(f"| relay runner (guarded) | {guarded} |")
    print(f"| ratio | {_spread(ratios)} | {_spread(cpu_ratios)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
