"""Sidecar benchmark: the relay when it matters, each figure beside a baseline of the same run.

    python bench/sidecar.py [--scenario backlog|memory|startup|drain ...] [--runs 3]
                            [--backlog 1000000] [--duration 5] [--before PATH]

- ``backlog``: 1-event ingest (wrk, 50 connections) while a backlog of N events drains to a
  local always-202 intake (its own process), against the same relay with no backlog; also
  the drain rate meanwhile.
- ``memory``: the relay's peak RSS (VmHWM) while 50 connections post 1000-event bodies,
  against the no-op aiohttp server's under the same load; and the answers' statuses.
- ``startup``: from the first accepted TCP connection to the first 202, with N events in the
  outbox against an empty outbox.
- ``drain``: a backlog of N events drained to the intake, events/s from the first tenth
  delivered to the last (steady state, start-up left out), and the CPU spent meanwhile per
  1000 events: the relay's event loop thread, its other threads (SQLite's), the intake;
  with ``--before PATH`` (a source tree of another revision) that revision's relay is
  measured in the same run, as the baseline.

Every scenario runs ``--runs`` times and reports min/median/max. Processes started here are
ended by their pid.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import ingest
import orjson
from aiohttp import web
from ingest import HOST, PIPELINE_PATH, ROOT, Server, free_port, proc_kb, run_wrk

from relay.testing.samples import LEVELS, event, request

INTAKE_TIMEOUT_S = 600.0
_CLEAN_ENV = ingest.clean_env
CONNECT_POLL_S = 0.0005


# --------------------------------------------------------------------------- the intake


def serve_intake(port: int) -> None:
    """An always-202 intake that counts events by commas at depth one (no parsing);
    GET /count answers its totals. Run as ``sidecar.py --intake PORT``."""
    totals = {"requests": 0, "events": 0}

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        totals["requests"] += 1
        # Each stored event begins with {"data or {"id... — count the events by their
        # separators: the relay joins events with "," between "}" and "{".
        totals["events"] += body.count(b"},{") + 1
        return web.Response(status=202, body=b"{}", content_type="application/json")

    async def count(_: web.Request) -> web.Response:
        return web.json_response(totals)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(PIPELINE_PATH, post)
    app.router.add_get("/count", count)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def intake_count(port: int) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/count")
        return int(orjson.loads(conn.getresponse().read())["events"])
    finally:
        conn.close()


# --------------------------------------------------------------------------- set-up


def config(path: Path, port: int, outbox: Path, intake_port: int | None) -> Path:
    """A relay config; with ``intake_port`` it delivers there (an API key is set in env)."""
    url = f"http://{HOST}:{intake_port}" if intake_port else "http://127.0.0.1:9"
    path.write_text(
        "\n".join(
            [
                "[server]",
                f'host = "{HOST}"',
                f"port = {port}",
                "[outbox]",
                f"path = {orjson.dumps(str(outbox)).decode()}",
                "max_events = 100000000",
                "max_bytes = 1099511627776",
                "[upstream]",
                f'url = "{url}"',
                "[log]",
                'format = "json"',
                'level = "warning"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def event_body() -> bytes:
    return orjson.dumps(event("job"))


def fill(path: Path, events: int, tree: Path) -> None:
    """An outbox of ``events`` events, made by the relay of ``tree`` then filled directly
    (with the running totals such a relay keeps, when it keeps them)."""
    env = relay_env(tree, api_key=False)
    subprocess.run(
        [sys.executable, "-c", FILL_SCRIPT, str(path), str(events)],
        check=True,
        env=env,
        cwd=tree,
    )


FILL_SCRIPT = """
import asyncio, sqlite3, sys, time, orjson
from pathlib import Path
from relay.config import OutboxSettings
from relay.store.outbox import Outbox
from relay.testing.samples import event
path, n = Path(sys.argv[1]), int(sys.argv[2])
async def make():
    outbox = await Outbox.open(OutboxSettings(path=path))
    await outbox.close()
asyncio.run(make())
body = orjson.dumps(event("job"))
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("BEGIN")
rows = ((time.time(), None, len(body), body) for _ in range(n))
conn.executemany("INSERT INTO events (received_at, end_at, size, body) VALUES (?,?,?,?)", rows)
tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
if "outbox_totals" in tables:
    conn.execute("UPDATE outbox_totals SET events = events + ?, bytes = bytes + ?",
                 (n, n * len(body)))
conn.execute("COMMIT")
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.close()
"""


def relay_env(tree: Path, *, api_key: bool) -> dict[str, str]:
    env = _CLEAN_ENV()
    env["PYTHONPATH"] = str(tree)
    if api_key:
        env["DD_API_KEY"] = "bench-key"
    return env


def fresh_outbox(path: Path, template: Path | None = None) -> None:
    """No outbox at ``path`` (nor its -wal and -shm), or a copy of ``template`` there."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if template is not None:
        shutil.copyfile(template, path)


def spawn_relay(tree: Path, cfg: Path, *, api_key: bool) -> subprocess.Popen[bytes]:
    """``ci-relay serve`` from ``tree`` (its working directory: see ``ingest.Server``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=relay_env(tree, api_key=api_key),
        cwd=tree,
        start_new_session=True,
    )


class Relay(Server):
    """``ci-relay serve`` from a source tree, with or without an API key."""

    def __init__(self, name: str, tree: Path, cfg: Path, port: int, *, api_key: bool) -> None:
        argv = [sys.executable, "-m", "relay", "serve", "--config", str(cfg)]
        super().__init__(name, argv, port, None, cwd=tree)
        self.tree = tree
        self.api_key = api_key

    def start(self) -> None:
        saved = ingest.clean_env
        ingest.clean_env = lambda: relay_env(self.tree, api_key=self.api_key)
        try:
            super().start()
        finally:
            ingest.clean_env = saved


def start_intake() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--intake", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return proc, port
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError("the intake did not listen")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(port: int, body: Path, duration_s: int, connections: int, server: Server) -> ingest.WrkRun:
    args = argparse.Namespace(threads=1, connections=connections, wrk_timeout=30)
    command = ingest.wrk_command(args, port, duration_s, body, body.with_suffix(".refusal"))
    return run_wrk(command, duration_s, server, None)


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured quantity over the runs."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def row(self) -> str:
        if not self.values:
            return f"| {self.name} | {self.unit} | - | - | - | 0 |"
        lo, mid, hi = min(self.values), statistics.median(self.values), max(self.values)
        runs = len(self.values)
        return f"| {self.name} | {self.unit} | {lo:,.2f} | {mid:,.2f} | {hi:,.2f} | {runs} |"


def table(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    lines = [
        f"### {title}",
        "",
        "| figure | unit | min | median | max | runs |",
        "|---|---|---:|---:|---:|---:|",
        *(f.row() for f in figures),
    ]
    lines.extend(f"\n- {n}" for n in notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- scenarios


def scenario_backlog(
    args: argparse.Namespace, work: Path, templates: dict[str, Path], trees: dict[str, Path]
) -> str:
    # The trees take turns run by run, so that a change in the machine's load falls on both.
    backlogs = {name: Backlog() for name in trees}
    body = work / "single.json"
    body.write_bytes(orjson.dumps(request(event("pipeline"))))
    for run in range(args.runs):
        for name, tree in trees.items():
            backlog_run(args, work, templates[name], tree, body, run, backlogs[name])
    return "\n\n".join(backlogs[name].table(args, name) for name in trees)


@dataclass
class Backlog:
    """The figures of the backlog scenario for one tree, run by run."""

    idle_rps: Figure = field(default_factory=lambda: Figure("idle: 1-event req/s", "req/s"))
    busy_rps: Figure = field(default_factory=lambda: Figure("draining: 1-event req/s", "req/s"))
    ratio: Figure = field(default_factory=lambda: Figure("ratio draining/idle", "x"))
    idle_p99: Figure = field(default_factory=lambda: Figure("idle: p99", "ms"))
    busy_p99: Figure = field(default_factory=lambda: Figure("draining: p99", "ms"))
    p99_ratio: Figure = field(default_factory=lambda: Figure("p99 ratio", "x"))
    drain: Figure = field(default_factory=lambda: Figure("drained meanwhile", "events/s"))
    notes: list[str] = field(default_factory=list)

    def table(self, args: argparse.Namespace, name: str) -> str:
        notes = [
            *self.notes,
            "targets: ratio >= 0.8, p99 ratio <= 1.5, drained meanwhile >= 100,000 events/s",
        ]
        shown = [
            self.idle_rps,
            self.busy_rps,
            self.ratio,
            self.idle_p99,
            self.busy_p99,
            self.p99_ratio,
            self.drain,
        ]
        return table(f"Ingest while {args.backlog:,} events drain ({name})", shown, notes)


def backlog_run(
    args: argparse.Namespace,
    work: Path,
    template: Path,
    tree: Path,
    body: Path,
    run: int,
    out: Backlog,
) -> None:
    figures = {}
    for label in ("idle", "draining"):
        intake, intake_port = start_intake()
        port = free_port()
        outbox = work / f"backlog-{label}.db"
        fresh_outbox(outbox, template if label == "draining" else None)
        cfg = config(work / "relay.toml", port, outbox, intake_port)
        relay = Relay(f"relay {label}", tree, cfg, port, api_key=True)
        try:
            relay.start()
            wrk(port, body, 1, args.connections, relay)  # warm-up
            before = intake_count(intake_port)
            started = time.monotonic()
            result = wrk(port, body, args.duration, args.connections, relay)
            elapsed = time.monotonic() - started
            drained = intake_count(intake_port) - before
            if result.refused or result.socket_errors:
                out.notes.append(f"run {run} {label}: {result.refused} refused, {result.errors}")
            figures[label] = (result.accepted_per_s, result.latency_ms["p99"], drained / elapsed)
            if label == "draining" and drained + before >= args.backlog:
                out.notes.append(f"run {run}: the backlog emptied before the run ended")
        finally:
            relay.stop()
            stop(intake)
    (i_rps, i_p99, _), (b_rps, b_p99, rate) = figures["idle"], figures["draining"]
    out.idle_rps.values.append(i_rps)
    out.idle_p99.values.append(i_p99)
    out.busy_rps.values.append(b_rps)
    out.busy_p99.values.append(b_p99)
    out.ratio.values.append(b_rps / i_rps)
    out.p99_ratio.values.append(b_p99 / i_p99)
    out.drain.values.append(rate)
    print(f"  backlog run {run} ({tree}): {figures}", file=sys.stderr)


def scenario_memory(args: argparse.Namespace, work: Path) -> str:
    relay_mb, noop_mb = Figure("relay peak RSS", "MB"), Figure("no-op peak RSS", "MB")
    accepted, refused = Figure("relay 202/s", "req/s"), Figure("relay 503/s", "req/s")
    notes: list[str] = []
    body = work / "batch.json"
    batch = [event(LEVELS[i % len(LEVELS)]) for i in range(1000)]
    body.write_bytes(orjson.dumps(request(*batch)))
    for run in range(args.runs):
        for kind in ("noop", "relay"):
            port = free_port()
            outbox = work / "memory.db"
            fresh_outbox(outbox)
            cfg = config(work / "relay.toml", port, outbox, None)
            server: Server
            if kind == "noop":
                server = Server("no-op", ingest.server_argv("noop", port, cfg), port, None)
            else:
                server = Relay("relay", ROOT, cfg, port, api_key=False)
            try:
                server.start()
                result = wrk(port, body, args.duration, args.connections, server)
                peak = proc_kb(server.pid, "VmHWM") / 1024
            finally:
                server.stop()
            if kind == "noop":
                noop_mb.values.append(peak)
                continue
            relay_mb.values.append(peak)
            accepted.values.append(result.accepted_per_s)
            refused.values.append(result.refused / result.duration_s)
            if result.refused and result.refused_status != 503:
                notes.append(f"run {run}: refusals with status {result.refused_status}")
            if result.socket_errors:
                notes.append(f"run {run}: socket errors {result.errors}")
    notes.append("target: relay peak RSS < 150 MB")
    return table(
        f"Peak RSS, {args.connections} connections posting 1000-event bodies",
        [noop_mb, relay_mb, accepted, refused],
        notes,
    )


def first_202(port: int, proc: subprocess.Popen[bytes], body: bytes) -> tuple[float, float]:
    """Seconds from start to listening, and from listening to the first 202."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the relay exited at start")
        try:
            sock = socket.create_connection((HOST, port), 1.0)
        except OSError:
            time.sleep(CONNECT_POLL_S)
            continue
        listening = time.monotonic()
        break
    with closing(sock):
        head = (
            f"POST {PIPELINE_PATH} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        answer = sock.recv(64)
        accepted = time.monotonic()
    if not answer.startswith(b"HTTP/1.1 202"):
        raise RuntimeError(f"first answer: {answer!r}")
    return listening - started, accepted - listening


def scenario_startup(
    args: argparse.Namespace, work: Path, templates: dict[str, Path], trees: dict[str, Path]
) -> str:
    figures = []
    body = orjson.dumps(request(event("pipeline")))
    for name, tree in trees.items():
        empty = Figure(f"{name}, empty outbox: listening -> first 202", "ms")
        full = Figure(f"{name}, {args.backlog:,} events: listening -> first 202", "ms")
        empty_all = Figure(f"{name}, empty outbox: process start -> first 202", "ms")
        full_all = Figure(f"{name}, {args.backlog:,} events: process start -> first 202", "ms")
        startup_of(args, work, templates[name], tree, body, (empty, empty_all), (full, full_all))
        figures += [empty, full, empty_all, full_all]
    return table("Start: first 202 after listening", figures, ["target: <= 10 ms"])


def startup_of(
    args: argparse.Namespace,
    work: Path,
    template: Path,
    tree: Path,
    body: bytes,
    empty: tuple[Figure, Figure],
    full: tuple[Figure, Figure],
) -> None:
    for _ in range(args.runs):
        for label, (figure, whole) in (("empty", empty), ("full", full)):
            outbox = work / f"startup-{label}.db"
            fresh_outbox(outbox, template if label == "full" else None)
            port = free_port()
            cfg = config(work / "relay.toml", port, outbox, None)
            proc = spawn_relay(tree, cfg, api_key=False)
            try:
                to_listen, to_202 = first_202(port, proc, body)
                figure.values.append(to_202 * 1000)
                whole.values.append((to_listen + to_202) * 1000)
            finally:
                stop(proc)


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of the relay by thread (its event loop, its other threads), and the
    intake's, as /proc counts them."""

    loop: float
    threads: float
    intake: float

    @classmethod
    def read(cls, relay_pid: int, intake_pid: int) -> CpuSplit:
        loop = threads = 0.0
        for task in Path(f"/proc/{relay_pid}/task").iterdir():
            with suppress(OSError):  # a thread that ended meanwhile
                seconds = _cpu_seconds(task / "stat")
                if task.name == str(relay_pid):
                    loop += seconds
                else:
                    threads += seconds
        return cls(loop, threads, _cpu_seconds(Path(f"/proc/{intake_pid}/stat")))

    def per_thousand(self, start: CpuSplit, events: int) -> tuple[float, float, float]:
        """ms of CPU per 1000 events delivered since ``start``."""
        scale = 1e6 / events
        return (
            (self.loop - start.loop) * scale,
            (self.threads - start.threads) * scale,
            (self.intake - start.intake) * scale,
        )


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Drained:
    rate: float  # events/s
    cpu_ms: tuple[float, float, float]  # per 1000 events: event loop, other threads, intake


def drain_once(tree: Path, work: Path, template: Path, events: int) -> Drained:
    intake, intake_port = start_intake()
    outbox = work / "drain.db"
    fresh_outbox(outbox, template)
    port = free_port()
    cfg = config(work / "relay.toml", port, outbox, intake_port)
    started = time.monotonic()
    proc = spawn_relay(tree, cfg, api_key=True)
    # Steady state: from the first tenth of the events delivered to the last.
    tenth: tuple[float, int, CpuSplit] | None = None
    try:
        while True:
            with suppress(OSError, http.client.HTTPException):
                count = intake_count(intake_port)
                if tenth is None and count >= events // 10:
                    tenth = (time.monotonic(), count, CpuSplit.read(proc.pid, intake.pid))
                if count >= events and tenth is not None:
                    delivered, elapsed = count - tenth[1], time.monotonic() - tenth[0]
                    cpu = CpuSplit.read(proc.pid, intake.pid).per_thousand(tenth[2], delivered)
                    return Drained(delivered / elapsed, cpu)
            if proc.poll() is not None or time.monotonic() - started > INTAKE_TIMEOUT_S:
                raise RuntimeError("the drain did not finish")
            time.sleep(0.005)
    finally:
        stop(proc)
        stop(intake)


def scenario_drain(
    args: argparse.Namespace, work: Path, templates: dict[str, Path], trees: dict[str, Path]
) -> str:
    figures = {label: Figure(f"{label}: drained", "events/s") for label in trees}
    cpu = {
        label: [
            Figure(f"{label}: relay event loop CPU per 1000 events", "ms"),
            Figure(f"{label}: relay's other threads (SQLite) CPU per 1000 events", "ms"),
            Figure(f"{label}: intake CPU per 1000 events", "ms"),
        ]
        for label in trees
    }
    ratio = Figure("this / before", "x")
    for _ in range(args.runs):
        rates = {}
        for label, tree in trees.items():
            drained = drain_once(tree, work, templates[label], args.drain_events)
            rates[label] = drained.rate
            figures[label].values.append(drained.rate)
            for figure, ms in zip(cpu[label], drained.cpu_ms, strict=True):
                figure.values.append(ms)
        if "before" in rates:
            ratio.values.append(rates["this"] / rates["before"])
    shown = [
        *figures.values(),
        *([ratio] if ratio.values else []),
        *(figure for label in trees for figure in cpu[label]),
    ]
    return table(
        f"Drain of {args.drain_events:,} events to an always-202 intake, steady state "
        "(from the first tenth delivered to the last)",
        shown,
        ["target: >= 1.5x the revision before, in the same run"],
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["backlog", "memory", "startup", "drain"],
        help="repeatable; all by default",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--drain-events", type=int, default=300_000)
    parser.add_argument("--before", type=Path, help="source tree of the revision to compare")
    parser.add_argument("--intake", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.intake:
        serve_intake(args.intake)
        return 0
    scenarios = args.scenario or ["backlog", "memory", "startup", "drain"]
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sidecar-") as tmp:
        work = Path(tmp)
        trees = {"this": ROOT, **({"before": args.before} if args.before else {})}
        backlogs = {name: work / f"backlog-{name}.template.db" for name in trees}
        if {"backlog", "startup"} & set(scenarios):
            for name, tree in trees.items():
                fill(backlogs[name], args.backlog, tree)
        out = []
        if "backlog" in scenarios:
            out.append(scenario_backlog(args, work, backlogs, trees))
        if "memory" in scenarios:
            out.append(scenario_memory(args, work))
        if "startup" in scenarios:
            out.append(scenario_startup(args, work, backlogs, trees))
        if "drain" in scenarios:
            drains = {name: work / f"drain-{name}.template.db" for name in trees}
            for name, tree in trees.items():
                fill(drains[name], args.drain_events, tree)
            out.append(scenario_drain(args, work, drains, trees))
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    print(f"\n`{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}` on {os.cpu_count()} CPUs\n")
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
