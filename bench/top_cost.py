"""What watching a relay costs its ingest: bench/ingest.py's 1-event load, with and without
a watcher beside it, in the same run.

    python bench/top_cost.py [--duration 30] [--rounds 3] [--json PATH]

Each run starts a fresh relay (bench/ingest.py's: FULL synchronous, no API key, so it
stores and never sends) and loads it with wrk (one thread, 50 keep-alive connections,
``bench/post.lua``, a 1-event body): a pre-flight POST, a warm-up, then the watcher is
started and a measured run of ``--duration`` seconds follows. The watchers:

- ``none``: nothing reads the relay (the baseline);
- ``status 1 Hz``: a plain client asks ``GET /status`` once a second;
- ``top --interval 1``: ``ci-relay top`` itself, live on a pseudo-terminal of its own
  (``/status`` a second; ``/ui/pipelines.json`` at its start, before the measured run, and
  once a minute: what one costs is in the second table).

The three take turns within each of ``--rounds`` rounds (the order rotating), so a drift
of the machine falls on all alike. wrk and the watcher share one CPU, the relay has the
other. Per watcher: 202s a second, wrk's p99, the relay's CPU time per request (from
/proc), each as min/median/max over the rounds, and the rate against the round's baseline
(median of the per-round ratios); also how many readings the watcher took in the measured
run. Processes started here are ended by their pid.

Rates on a shared machine drift by several percent from run to run, more than one request
a second can move them; so after the baseline's measured run, on its relay idle with the
outbox that run filled, the relay's own CPU time (all its threads, from /proc) is taken
for what a watcher asks: the first ``GET /status`` (which also has the doctor's problem
counts recomputed, as ``/status`` and ``/metrics`` do at most every 10 s), then 100 more
(the counts cached), then one ``GET /ui/pipelines.json``. Those give the share of one CPU
that a watcher costs the relay, whatever the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ingest
import orjson
from ingest import HOST, ROOT, Server, free_port, pinned, post_once, relay_config, run_wrk

from relay.testing.process import relay_free_env
from relay.testing.samples import event, request

WATCHERS = ("none", "status 1 Hz", "top --interval 1")
STOP_TIMEOUT_S = 10.0
HOME = b"\x1b[H"  # rich's live display starts each frame with it


@dataclass
class Costs:
    """The relay's CPU time, in ms, for what a watcher asks (idle relay, filled outbox)."""

    outbox_events: int
    status_first_ms: float  # the doctor's refresh included
    status_ms: float  # each of 100 more, the counts cached
    pipelines_ms: float  # one GET /ui/pipelines.json (0 where not served)

    def share_of_a_cpu(self, pipelines_every_s: float) -> float:
        """The relay's CPU a second at one /status a second (a refresh every 10 s) and the
        pipelines every ``pipelines_every_s`` (0: never), as a fraction of one CPU."""
        per_s = self.status_ms + (self.status_first_ms - self.status_ms) / 10
        if pipelines_every_s:
            per_s += self.pipelines_ms / pipelines_every_s
        return per_s / 1000


@dataclass
class Run:
    """One measured run under one watcher."""

    watcher: str
    round: int
    req_per_s: float
    p99_ms: float
    relay_cpu_us_per_request: float
    readings: int  # /status answers (status 1 Hz) or frames drawn (top) in the measured run
    refused: int
    socket_errors: int
    costs: Costs | None = None


class StatusPoller:
    """GET /status once a second on a connection of its own, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _poll(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            conn.request("GET", "/status")
            answer = conn.getresponse()
            answer.read()
            self.answers += answer.status == 200
            due += 1.0
        conn.close()

    def readings(self) -> int:
        return self.answers

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)


class TopOnPty:
    """``ci-relay top --interval 1`` live on a pseudo-terminal, its output drained by a
    thread (a full terminal would hold it); ``q`` ends it, else SIGTERM to its pid."""

    def __init__(self, port: int, cpus: set[int] | None) -> None:
        self.port = port
        self.cpus = cpus
        self.output = bytearray()
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = -1
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.master, slave = os.openpty()
        env = relay_free_env() | {"TERM": "xterm-256color", "COLUMNS": "130", "LINES": "50"}
        argv = [sys.executable, "-m", "relay", "top", "--url", f"http://{HOST}:{self.port}"]
        with pinned(self.cpus):
            self.proc = subprocess.Popen(
                [*argv, "--interval", "1"],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        os.close(slave)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):  # EIO once the command has gone
            while chunk := os.read(self.master, 1 << 16):
                self.output += chunk

    def readings(self) -> int:
        return self.output.count(HOME)

    def stop(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            os.write(self.master, b"q")
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        os.close(self.master)


Watcher = StatusPoller | TopOnPty


def watcher_for(name: str, port: int, cpus: set[int] | None) -> Watcher | None:
    if name == "status 1 Hz":
        return StatusPoller(port)
    if name == "top --interval 1":
        return TopOnPty(port, cpus)
    return None


@contextlib.contextmanager
def watching(watcher: Watcher | None) -> Iterator[None]:
    if watcher is None:
        yield
        return
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def reading_costs(port: int, pid: int) -> Costs:
    """The relay's CPU for the first /status, for each of 100 more, for one pipelines list."""
    time.sleep(1.0)  # the writer's last commits settle
    outbox = _get_json(port, "/status")["outbox"]["events"]  # also the doctor's refresh
    time.sleep(10.5)  # past its 10 s: the next /status refreshes again
    before = ingest.cpu_seconds(pid)
    _get(port, "/status")
    first = ingest.cpu_seconds(pid) - before
    before = ingest.cpu_seconds(pid)
    for _ in range(100):
        _get(port, "/status")
    each = (ingest.cpu_seconds(pid) - before) / 100
    before = ingest.cpu_seconds(pid)
    served = _get(port, "/ui/pipelines.json") == 200
    pipelines = ingest.cpu_seconds(pid) - before if served else 0.0
    return Costs(outbox, first * 1000, each * 1000, pipelines * 1000)


def _get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path)
        found: dict[str, Any] = orjson.loads(conn.getresponse().read())
        return found
    finally:
        conn.close()


def one_run(
    args: argparse.Namespace,
    name: str,
    number: int,
    workdir: Path,
    cpus: tuple[set[int] | None, set[int] | None],
) -> Run:
    """A fresh relay, loaded by wrk with ``name`` beside it; ended by its pid."""
    wrk_cpus, relay_cpus = cpus
    rundir = Path(tempfile.mkdtemp(prefix="top-cost-", dir=workdir))
    body = rundir / "body.json"
    body.write_bytes(orjson.dumps(request(event("pipeline"))))
    port = free_port()
    config = relay_config(rundir / "relay.toml", port, rundir / "outbox.db", "FULL")
    argv = [sys.executable, "-m", "relay", "serve", "--config", str(config)]
    server = Server("relay", argv, port, relay_cpus)
    try:
        server.start()
        status, said = post_once(port, body.read_bytes())
        if status != 202:
            raise RuntimeError(f"pre-flight POST answered {status}: {said[:200]}")
        refusal = rundir / "refusal.txt"
        wrk = ingest.wrk_command(args, port, args.warmup, body, refusal)
        run_wrk(wrk, args.warmup, server, wrk_cpus)
        watcher = watcher_for(name, port, wrk_cpus)
        with watching(watcher):
            time.sleep(1.5)  # the watcher's start-up is not what is measured
            before = 0 if watcher is None else watcher.readings()
            wrk = ingest.wrk_command(args, port, args.duration, body, refusal)
            measured = run_wrk(wrk, args.duration, server, wrk_cpus)
            taken = 0 if watcher is None else watcher.readings() - before
        costs = reading_costs(port, server.pid) if watcher is None else None
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)
    return Run(
        watcher=name,
        round=number,
        req_per_s=measured.accepted_per_s,
        p99_ms=measured.latency_ms["p99"],
        relay_cpu_us_per_request=measured.server_cpu_s / max(1, measured.requests) * 1e6,
        readings=taken,
        refused=measured.refused,
        socket_errors=measured.socket_errors,
        costs=costs,
    )


def _spread(values: Sequence[float], digits: int = 0) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:,.{digits}f} ({low:,.{digits}f} - {high:,.{digits}f})"


def table(runs: Sequence[Run]) -> str:
    baseline = {run.round: run.req_per_s for run in runs if run.watcher == "none"}
    lines = [
        "| watcher | 202/s median (min - max) | p99 ms | relay CPU us/request | "
        "vs none (median of rounds) | readings in the run |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in WATCHERS:
        mine = [run for run in runs if run.watcher == name]
        if not mine:
            continue
        ratios = [run.req_per_s / baseline[run.round] for run in mine if baseline.get(run.round)]
        lines.append(
            f"| {name} | {_spread([r.req_per_s for r in mine])} "
            f"| {_spread([r.p99_ms for r in mine], 1)} "
            f"| {_spread([r.relay_cpu_us_per_request for r in mine])} "
            f"| {statistics.median(ratios):.3f} "
            f"| {_spread([float(r.readings) for r in mine])} |"
        )
    return "\n".join(lines)


def costs_table(runs: Sequence[Run]) -> str:
    found = [run.costs for run in runs if run.costs is not None]
    if not found:
        return ""
    lines = [
        "| relay CPU, ms (idle relay, the baseline's outbox) | median (min - max) |",
        "| --- | ---: |",
        f"| events in the outbox | {_spread([float(c.outbox_events) for c in found])} |",
        "| first GET /status (the doctor's refresh) | "
        f"{_spread([c.status_first_ms for c in found], 1)} |",
        f"| each GET /status after it | {_spread([c.status_ms for c in found], 2)} |",
        f"| one GET /ui/pipelines.json | {_spread([c.pipelines_ms for c in found], 1)} |",
        "| share of one CPU: /status a second | "
        f"{_spread([100 * c.share_of_a_cpu(0) for c in found], 2)} % |",
        "| share of one CPU: top (also the pipelines once a minute) | "
        f"{_spread([100 * c.share_of_a_cpu(60) for c in found], 2)} % |",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each watcher")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the runs as JSON")
    args = parser.parse_args(argv)
    args.threads, args.wrk_timeout = 1, 60  # as bench/ingest.py's defaults
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--duration, --warmup and --rounds must be >= 1")
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (Debian: apt-get install wrk)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = ingest.cpu_plan(no_pin=False)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ci-relay-top-cost-") as workdir:
        for number in range(args.rounds):
            turn = number % len(WATCHERS)
            for name in WATCHERS[turn:] + WATCHERS[:turn]:
                print(f"round {number + 1}: {name} ...", file=sys.stderr, flush=True)
                runs.append(one_run(args, name, number, Path(workdir), cpus))
    print(table(runs))
    print()
    print(costs_table(runs))
    print()
    print(
        f"wrk: 1 thread, {args.connections} connections, 1-event requests, "
        f"{args.warmup} s warm-up, {args.duration} s measured; {args.rounds} rounds; "
        f"wrk and the watcher on CPU {ingest._describe_cpus(cpus[0])}, "
        f"the relay on CPU {ingest._describe_cpus(cpus[1])}."
    )
    if args.json:
        args.json.write_text(orjson.dumps([asdict(run) for run in runs]).decode())
    broken = [run for run in runs if run.refused or run.socket_errors]
    for run in broken:
        print(f"broken: {run}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
