"""Ingest benchmark: the relay's durable 202 against a no-op aiohttp server, driven by wrk.

For each scenario (1-event requests, 1000-event requests) the same wrk load (one thread,
50 keep-alive connections, a warm-up run then a measured run) hits two servers started
here on 127.0.0.1, one after the other: the baseline ``bench/noop_server.py`` (reads the
body, answers 202 ``{}``) and ``ci-relay serve`` with a fresh outbox in a temporary
directory. wrk runs on one CPU and the server on the other. The relay's answers are
checked (every one must be 202) and so is its outbox, counted with sqlite3 after SIGTERM.

The "big" scenario POSTs 5 MiB bodies one at a time to a fresh relay each: two valid ones
(one event with 870,000 key:value tags; 1000 padded events) and two all-invalid ones of the
first's shape (2.6 million numbers as tags; 1.3 million tags without a colon), timing each
answer, polling /health meanwhile and reading the relay's RSS from /proc.

    python bench/ingest.py [--duration 10] [--synchronous FULL|NORMAL] [--json PATH]
                           [--scenario single|batch|big ...] [--big-runs 5]

Exit status: 0 all checks and targets pass, 1 a correctness check failed (an answer that
is not 202, socket errors, an outbox that does not hold what was acknowledged, a server
that failed), 3 only a performance target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.testing.process import relay_free_env  # noqa: E402
from relay.testing.samples import LEVELS, event, request  # noqa: E402

BENCH = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH / "post.lua"
NOOP_SERVER = BENCH / "noop_server.py"
HOST = "127.0.0.1"
PIPELINE_PATH = "/api/v2/ci/pipeline"

# The targets this benchmark checks.
SINGLE_MIN_RATIO = 0.50
SINGLE_MAX_P99_MS = 25.0
BATCH_MIN_EVENTS_PER_S = 40_000.0

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_MISSED = 3

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0
# Slack on top of a wrk run's duration before it is killed.
WRK_SLACK_S = 60.0

ServerKind = Literal["noop", "relay"]


# --------------------------------------------------------------------------- results


@dataclass
class WrkRun:
    """One wrk run, from the BENCH_RESULT line of bench/post.lua and wrk's own text."""

    command: list[str]
    duration_s: float
    requests: int  # responses wrk completed (any status)
    accepted: int  # responses with status 202
    refused: int  # responses with another status
    refused_status: int  # one of those statuses, 0 if none
    non_2xx_3xx: int | None  # wrk's "Non-2xx or 3xx responses" line, None when absent
    errors: dict[str, int]
    latency_ms: dict[str, float]
    server_cpu_s: float
    wrk_cpu_s: float
    output: str

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s if self.duration_s else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(n for kind, n in self.errors.items() if kind != "status")


@dataclass
class OutboxCheck:
    """What the relay's outbox holds after SIGTERM against what was acknowledged."""

    rows: int
    acknowledged_requests: int  # 202 answers seen by the pre-flight and every wrk run
    events_per_request: int
    wrk_runs: int
    connections: int
    exit_status: int | None

    @property
    def acknowledged_events(self) -> int:
        return self.acknowledged_requests * self.events_per_request

    @property
    def max_in_flight_events(self) -> int:
        # wrk keeps at most one request per connection in flight (no pipelining); the ones
        # in flight when a run ends may be committed by the relay but are never counted.
        return self.wrk_runs * self.connections * self.events_per_request

    @property
    def surplus_events(self) -> int:
        return self.rows - self.acknowledged_events

    def problems(self) -> list[str]:
        found = []
        if self.exit_status != 0:
            found.append(f"relay exited with status {self.exit_status} after SIGTERM")
        if self.rows < self.acknowledged_events:
            found.append(
                f"LOST EVENTS: outbox holds {self.rows} events but "
                f"{self.acknowledged_events} were acknowledged with 202"
            )
        if self.surplus_events > self.max_in_flight_events:
            found.append(
                f"outbox holds {self.surplus_events} events more than acknowledged, more than "
                f"the {self.max_in_flight_events} that could have been in flight"
            )
        if self.rows % self.events_per_request:
            found.append(
                f"outbox holds {self.rows} events, not a whole number of "
                f"{self.events_per_request}-event requests (a request stored in part)"
            )
        return found


@dataclass
class ServerRun:
    """One server under one scenario: pre-flight, warm-up, measured run, checks."""

    scenario: str
    server: ServerKind
    label: str
    events_per_request: int
    preflight_status: int = 0
    preflight_body: str = ""
    warmup: WrkRun | None = None
    measured: WrkRun | None = None
    outbox: OutboxCheck | None = None
    first_refusal: str = ""
    failure: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def req_per_s(self) -> float:
        return self.measured.accepted_per_s if self.measured else 0.0

    @property
    def events_per_s(self) -> float:
        return self.req_per_s * self.events_per_request

    def problems(self) -> list[str]:
        found = []
        if self.failure:
            found.append(self.failure)
        if self.preflight_status != 202 or self.preflight_body != "{}":
            found.append(
                f"pre-flight POST answered {self.preflight_status} {self.preflight_body[:300]!r}"
            )
        for name, run in (("warm-up", self.warmup), ("measured", self.measured)):
            if run is None:
                continue
            if run.refused:
                found.append(
                    f"{name} run: {run.refused} of {run.requests} answers were not 202 "
                    f"(e.g. {run.refused_status}; wrk's Non-2xx or 3xx: {run.non_2xx_3xx or 0})"
                )
            if run.socket_errors:
                found.append(f"{name} run: socket errors {run.errors}")
            if run.requests != run.accepted + run.refused:
                found.append(
                    f"{name} run: wrk completed {run.requests} requests but the script "
                    f"counted {run.accepted + run.refused} answers"
                )
        if self.measured is None and not self.failure:
            found.append("no measured run")
        if self.first_refusal:
            found.append(f"first refusal body: {self.first_refusal[:500]}")
        if self.outbox is not None:
            found.extend(self.outbox.problems())
        return found

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["req_per_s"] = self.req_per_s
        data["events_per_s"] = self.events_per_s
        data["problems"] = self.problems()
        for name in ("warmup", "measured"):
            if data[name] is not None:
                data[name].pop("output", None)
        return data


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    events_per_request: int
    body: bytes


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block on ``cpus``: a process started inside it inherits this CPU set.

    ``sched_setaffinity(0)`` sets the calling thread only, and a child inherits the mask of
    the thread that forked it, so every thread the child starts later is pinned too.
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime); ``fields`` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_env() -> dict[str, str]:
    """The environment without DD_* and CI_RELAY_*: no API key, so the relay sends nothing."""
    return relay_free_env()


class Server:
    """A server subprocess started here; it is ended by its own pid and nothing else."""

    def __init__(
        self, name: str, argv: list[str], port: int, cpus: set[int] | None, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.cpus = cpus
        # `python -m relay` imports the relay of its working directory (sys.path[0]) ahead of
        # PYTHONPATH: the directory is what chooses the source tree being measured.
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with pinned(self.cpus):
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=self.cwd,
                # Out of the terminal's process group: a Ctrl-C reaches this script, whose
                # finally: ends the server with SIGTERM like every other run.
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = "\n".join(self.log)
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} at start:\n{tail}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                # Had another program taken the port first, ours would die of it: look again.
                time.sleep(0.2)
                if self.proc.poll() is None:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {HOST}:{self.port} in time")

    def _read_log(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.decode(errors="replace").rstrip())

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(5.0)
        return self.proc.returncode


def relay_config(path: Path, port: int, outbox: Path, synchronous: str) -> Path:
    path.write_text(
        "\n".join(
            [
                "[server]",
                f'host = "{HOST}"',
                f"port = {port}",
                "",
                "[outbox]",
                f"path = {orjson.dumps(str(outbox)).decode()}",
                f'synchronous = "{synchronous}"',
                "# Backpressure (503 past max_events or max_bytes) is not what is measured.",
                "max_events = 1000000000",
                "max_bytes = 1099511627776",
                "",
                "[upstream]",
                "# No API key is set (DD_* removed from the environment): nothing is sent.",
                "# Should one appear, a closed local port keeps the events on this machine.",
                'url = "http://127.0.0.1:9"',
                "",
                "[log]",
                'format = "json"',
                'level = "warning"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def post_once(port: int, body: bytes) -> tuple[int, str]:
    """One POST of ``body``; the status and the answer's text."""
    conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_S)
    try:
        conn.request("POST", PIPELINE_PATH, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


# --------------------------------------------------------------------------- wrk

_RESULT = re.compile(r"^BENCH_RESULT (\{.*\})$", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def wrk_command(
    args: argparse.Namespace, port: int, duration_s: int, body: Path, refusal: Path
) -> list[str]:
    return [
        "wrk",
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={duration_s}s",
        # wrk drops latencies above its timeout from the histogram: keep it far away.
        f"--timeout={args.wrk_timeout}s",
        "--latency",
        f"--script={LUA_SCRIPT}",
        f"http://{HOST}:{port}{PIPELINE_PATH}",
        "--",
        str(body),
        str(refusal),
    ]


def run_wrk(command: list[str], duration_s: int, server: Server, cpus: set[int] | None) -> WrkRun:
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server.pid)
    with pinned(cpus):
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    try:
        output, _ = proc.communicate(timeout=duration_s + WRK_SLACK_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    server_cpu = cpu_seconds(server.pid) - server_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    text = output.decode(errors="replace")
    match = _RESULT.search(text)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed (status {proc.returncode}):\n{text}")
    result = orjson.loads(match[1])
    non_2xx = _NON_2XX.search(text)
    latency = {name: us / 1000.0 for name, us in result["latency_us"].items()}
    return WrkRun(
        command=command,
        duration_s=result["duration_us"] / 1e6,
        requests=result["requests"],
        accepted=result["accepted"],
        refused=result["refused"],
        refused_status=result["refused_status"],
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else None,
        errors=result["errors"],
        latency_ms=latency,
        server_cpu_s=server_cpu,
        wrk_cpu_s=wrk_cpu,
        output=text,
    )


# --------------------------------------------------------------------------- scenarios


def build_scenarios(batch_events: int) -> list[Scenario]:
    """Request bodies with fresh timestamps (events ended 30 s ago; 18 h are allowed)."""
    batch = [event(LEVELS[i % len(LEVELS)]) for i in range(batch_events)]
    return [
        Scenario("single", "1-event requests", 1, orjson.dumps(request(event("pipeline")))),
        Scenario(
            "batch", f"{batch_events}-event requests", batch_events, orjson.dumps(request(*batch))
        ),
    ]


def server_argv(kind: ServerKind, port: int, config: Path) -> list[str]:
    if kind == "noop":
        return [sys.executable, str(NOOP_SERVER), "--host", HOST, "--port", str(port)]
    return [sys.executable, "-m", "relay", "serve", "--config", str(config)]


def run_server(
    args: argparse.Namespace,
    scenario: Scenario,
    kind: ServerKind,
    workdir: Path,
    cpus: tuple[set[int] | None, set[int] | None],
    started: list[Server],
) -> ServerRun:
    """Start one server, pre-flight, warm up, measure, stop it, check the relay's outbox."""
    wrk_cpus, server_cpus = cpus
    label = "no-op aiohttp" if kind == "noop" else f"relay ({args.synchronous})"
    run = ServerRun(scenario.key, kind, label, scenario.events_per_request)
    rundir = Path(tempfile.mkdtemp(prefix=f"{scenario.key}-{kind}-", dir=workdir))
    body_file = rundir / "body.json"
    body_file.write_bytes(scenario.body)
    refusal_file = rundir / "first-refusal.txt"
    outbox_path = rundir / "outbox.db"
    port = free_port()
    config = relay_config(rundir / "relay.toml", port, outbox_path, args.synchronous)
    server = Server(label, server_argv(kind, port, config), port, server_cpus)
    started.append(server)
    wrk_runs = 0
    acknowledged = 0
    profiler: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        run.preflight_status, run.preflight_body = post_once(port, scenario.body)
        acknowledged += int(run.preflight_status == 202)
        if args.warmup > 0:
            command = wrk_command(args, port, args.warmup, body_file, refusal_file)
            wrk_runs += 1
            run.warmup = run_wrk(command, args.warmup, server, wrk_cpus)
            acknowledged += run.warmup.accepted
        command = wrk_command(args, port, args.duration, body_file, refusal_file)
        wrk_runs += 1
        _progress(f"  {scenario.title} -> {label}: wrk for {args.duration}s (pid {server.pid})")
        if args.profile and kind == "relay":
            path = profile_path(args.profile, scenario.key)
            profiler = start_profile(path, server.pid, args.duration)
        run.measured = run_wrk(command, args.duration, server, wrk_cpus)
        acknowledged += run.measured.accepted
    except (RuntimeError, OSError, subprocess.SubprocessError, http.client.HTTPException) as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if profiler is not None:
            end_helper(profiler)
        exit_status = server.stop()
        started.remove(server)
        run.log_tail = list(server.log)[-20:]
    if refusal_file.exists():
        run.first_refusal = refusal_file.read_text(errors="replace")
    # After a failure the acknowledged count is incomplete: there is nothing to compare.
    if kind == "relay" and not run.failure:
        try:
            rows = count_events(outbox_path)
        except sqlite3.Error as exc:
            run.failure = f"cannot count the outbox's events: {exc}"
        else:
            run.outbox = OutboxCheck(
                rows=rows,
                acknowledged_requests=acknowledged,
                events_per_request=scenario.events_per_request,
                wrk_runs=wrk_runs,
                connections=args.connections,
                exit_status=exit_status,
            )
    shutil.rmtree(rundir, ignore_errors=True)
    return run


def count_events(path: Path) -> int:
    """Events in the outbox file of a stopped relay (read-only: nothing is created)."""
    uri = f"{path.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=HTTP_TIMEOUT_S)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def profile_path(path: Path, scenario: str) -> Path:
    """PATH for the 1-event run, PATH with -batch before its suffix for the batch run."""
    return path if scenario == "single" else path.with_stem(f"{path.stem}-{scenario}")


def start_profile(path: Path, pid: int, duration_s: int) -> subprocess.Popen[bytes]:
    """py-spy on the relay during a measured run (it needs ptrace rights)."""
    seconds = max(1, duration_s - 1)
    command = ["py-spy", "record", "--format", "raw", "--output", str(path)]
    # --idle keeps samples of threads that wait (epoll, fsync); --nonblocking does not pause
    # the relay for each sample, so it perturbs the measured run less.
    command += ["--duration", str(seconds), "--threads", "--idle", "--nonblocking"]
    command += ["--pid", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_helper(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Let a helper (py-spy) finish in ``timeout_s``, else kill it, by its pid."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- 5 MiB bodies

# Targets for one 5 MiB request (the default body limit): refusing an all-invalid body costs
# at most this many times accepting the valid body of the same shape, grows the relay's
# peak RSS by less than this, and /health keeps answering meanwhile.
BIG_MAX_RATIO = 2.0
BIG_MAX_RSS_GROWTH_MB = 100.0
BIG_MAX_HEALTH_MS = 1000.0
BIG_LIMIT_BYTES = 5 * 1024 * 1024
BIG_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class BigBody:
    """One 5 MiB request body and the status the relay must answer it with."""

    key: str
    title: str
    body: bytes
    status: int


@dataclass
class BigRun:
    """Several POSTs of one big body to a fresh relay, with /health polled meanwhile."""

    key: str
    title: str
    size: int
    expected_status: int
    statuses: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    health_max_ms: list[float] = field(default_factory=list)
    health_answers: list[int] = field(default_factory=list)
    rss_start_kb: int = 0
    hwm_kb: int = 0
    rss_end_kb: int = 0
    first_answer: str = ""
    failure: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("inf")

    @property
    def peak_growth_mb(self) -> float:
        return (self.hwm_kb - self.rss_start_kb) / 1024

    @property
    def retained_mb(self) -> float:
        return (self.rss_end_kb - self.rss_start_kb) / 1024

    def problems(self) -> list[str]:
        found = [self.failure] if self.failure else []
        wrong = [s for s in self.statuses if s != self.expected_status]
        if wrong:
            found.append(
                f"{self.title}: answered {wrong[0]}, not {self.expected_status} "
                f"({self.first_answer[:300]!r})"
            )
        return found


def _fill(kind: str, placeholder_list: bytes, item: bytes) -> bytes:
    """A one-event request whose tags list holds ``item`` repeated up to the body limit."""
    shell = orjson.dumps(request(event(kind, tags=["PLACEHOLDER"])))
    count = (BIG_LIMIT_BYTES - len(shell) - 16) // (len(item) + 1)
    return shell.replace(placeholder_list, b",".join([item] * count))


def build_big_bodies() -> list[BigBody]:
    """5 MiB bodies: valid ones, and all-invalid ones of the same shape."""
    placeholder = b'"PLACEHOLDER"'
    per_event = BIG_LIMIT_BYTES // 1000
    shell = len(orjson.dumps(event("job", padding="")))
    events = [
        event(LEVELS[i % len(LEVELS)], padding="p" * (per_event - shell - 16)) for i in range(1000)
    ]
    return [
        BigBody("tags", "valid: 1 event, tags key:value", _fill("job", placeholder, b'"k:v"'), 202),
        BigBody("events", "valid: 1000 events, padded", orjson.dumps(request(*events)), 202),
        BigBody("ints", "invalid: 1 event, tags all numbers", _fill("job", placeholder, b"1"), 400),
        BigBody(
            "words", "invalid: 1 event, tags without colon", _fill("job", placeholder, b'"x"'), 400
        ),
    ]


def proc_kb(pid: int, key: str) -> int:
    """A VmRSS or VmHWM figure of ``pid`` from /proc, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def poll_health(port: int, done: threading.Event, latencies: list[float]) -> None:
    """GET /health back to back until ``done``, recording each answer's latency (ms)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=BIG_TIMEOUT_S)
    try:
        while not done.is_set():
            start = time.perf_counter()
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            done.wait(0.005)
    finally:
        conn.close()


def post_big(port: int, body: bytes, run: BigRun) -> None:
    """One POST of a big body with /health polled meanwhile; adds its figures to ``run``."""
    done = threading.Event()
    latencies: list[float] = []
    poller = threading.Thread(target=poll_health, args=(port, done, latencies), daemon=True)
    conn = http.client.HTTPConnection(HOST, port, timeout=BIG_TIMEOUT_S)
    try:
        poller.start()
        start = time.perf_counter()
        conn.request("POST", PIPELINE_PATH, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        run.seconds.append(time.perf_counter() - start)
    finally:
        done.set()
        conn.close()
        poller.join(BIG_TIMEOUT_S)
    run.statuses.append(response.status)
    run.first_answer = run.first_answer or text
    run.health_max_ms.append(max(latencies, default=float("inf")))
    run.health_answers.append(len(latencies))


def run_big(
    args: argparse.Namespace,
    big: BigBody,
    workdir: Path,
    cpus: set[int] | None,
    started: list[Server],
) -> BigRun:
    """A fresh relay, a small warm-up request, then ``--big-runs`` POSTs of ``big``."""
    run = BigRun(big.key, big.title, len(big.body), big.status)
    rundir = Path(tempfile.mkdtemp(prefix=f"big-{big.key}-", dir=workdir))
    port = free_port()
    config = relay_config(rundir / "relay.toml", port, rundir / "outbox.db", args.synchronous)
    server = Server(f"relay ({big.key})", server_argv("relay", port, config), port, cpus)
    started.append(server)
    try:
        server.start()
        post_once(port, orjson.dumps(request(event("job"))))
        run.rss_start_kb = proc_kb(server.pid, "VmRSS")
        for _ in range(args.big_runs):
            post_big(port, big.body, run)
        run.hwm_kb = proc_kb(server.pid, "VmHWM")
        run.rss_end_kb = proc_kb(server.pid, "VmRSS")
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        run.failure = f"{big.title}: {type(exc).__name__}: {exc}"
    finally:
        server.stop()
        started.remove(server)
        shutil.rmtree(rundir, ignore_errors=True)
    return run


def big_table(runs: Sequence[BigRun]) -> str:
    lines = [
        "| body | bytes | answer | ms min / median / max | vs valid tags | peak RSS growth MB "
        "| RSS kept MB | /health max ms (answers) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    valid = next((r for r in runs if r.key == "tags"), None)
    for run in runs:
        ms = [s * 1000 for s in run.seconds] or [0.0]
        ratio = run.median_s / valid.median_s if valid and valid.seconds else 0.0
        statuses = ",".join(sorted({str(s) for s in run.statuses})) or "-"
        health = max(run.health_max_ms, default=0.0)
        lines.append(
            f"| {run.title} | {_num(run.size)} | {statuses} | {min(ms):,.0f} / "
            f"{statistics.median(ms):,.0f} / {max(ms):,.0f} | {ratio:.2f} "
            f"| {run.peak_growth_mb:,.0f} | {run.retained_mb:,.0f} "
            f"| {health:,.0f} ({min(run.health_answers, default=0)}+) |"
        )
    return "\n".join(lines)


def big_targets(runs: Sequence[BigRun]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    valid = next((r for r in runs if r.key == "tags"), None)
    for run in runs:
        if run.expected_status != 400 or not run.seconds:
            continue
        # The RSS bound is for the body of 2.6 million invalid tags; 1.3 million one-letter
        # strings need more as parsed Python strings alone (the table shows how much).
        rss_bound = run.key == "ints"
        if valid is not None and valid.seconds:
            ratio = run.median_s / valid.median_s
            found.append(
                {
                    "target": f"refusing '{run.title}' <= {BIG_MAX_RATIO:g}x accepting "
                    f"'{valid.title}' (medians)",
                    "measured": f"{ratio:.2f}x ({run.median_s * 1000:,.0f} / "
                    f"{valid.median_s * 1000:,.0f} ms)",
                    "pass": ratio <= BIG_MAX_RATIO,
                }
            )
        if rss_bound:
            found.append(
                {
                    "target": f"'{run.title}': peak RSS growth < {BIG_MAX_RSS_GROWTH_MB:.0f} MB",
                    "measured": f"{run.peak_growth_mb:,.1f} MB",
                    "pass": run.peak_growth_mb < BIG_MAX_RSS_GROWTH_MB,
                }
            )
        health = max(run.health_max_ms, default=float("inf"))
        found.append(
            {
                "target": f"'{run.title}': /health answers meanwhile, each in < "
                f"{BIG_MAX_HEALTH_MS:,.0f} ms",
                "measured": f"max {health:,.0f} ms, at least {min(run.health_answers)} answers "
                "per request",
                "pass": health < BIG_MAX_HEALTH_MS and min(run.health_answers) > 0,
            }
        )
    return found


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401 - importable means both servers run on it

        version = importlib.metadata.version("uvloop")
        loop = f"uvloop {version} (uvloop.run, as relay/cli.py does)"
    except ImportError:
        loop = "asyncio (uvloop not importable)"
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = (
        subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        .stdout.split("Copyright")[0]
        .strip()
    )
    return {
        "nproc": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": loop,
        "aiohttp": importlib.metadata.version("aiohttp"),
        "wrk": wrk_version,
        "relay_revision": relay_revision(),
    }


def relay_revision() -> str:
    """The commit the relay runs from, and whether relay/ differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = ["git", "-C", str(ROOT), "--no-optional-locks", "status", "--porcelain"]
        changed = subprocess.run(
            [*status, "--", "relay", "migrations"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} + uncommitted changes in relay/" if changed else head


def filesystem_of(path: Path) -> str:
    """The mount point, type and device that hold ``path`` (fsync cost depends on them)."""
    best = ("/", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def results_table(runs: Sequence[ServerRun], scenarios: Sequence[Scenario]) -> str:
    lines = [
        "| scenario | server | req/s | events/s | p50 ms | p99 ms | vs no-op |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    titles = {s.key: s.title for s in scenarios}
    for run in runs:
        baseline = _find(runs, run.scenario, "noop")
        ratio = run.req_per_s / baseline.req_per_s if baseline and baseline.req_per_s else 0.0
        latency = run.measured.latency_ms if run.measured else {}
        lines.append(
            f"| {titles[run.scenario]} | {run.label} | {_num(run.req_per_s)} "
            f"| {_num(run.events_per_s)} | {latency.get('p50', 0):.2f} "
            f"| {latency.get('p99', 0):.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def checks_table(runs: Sequence[ServerRun], scenarios: Sequence[Scenario]) -> str:
    lines = [
        "| scenario | server | measured answers 202 / other | socket errors | server CPU "
        "| wrk CPU | outbox events = acked in all runs + surplus (limit) | check |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    titles = {s.key: s.title for s in scenarios}
    for run in runs:
        measured = run.measured
        answers = f"{measured.accepted:,} / {measured.refused:,}" if measured else "-"
        errors = str(measured.socket_errors) if measured else "-"
        server_cpu = wrk_cpu = "-"
        if measured and measured.duration_s:
            server_cpu = f"{100 * measured.server_cpu_s / measured.duration_s:.0f}%"
            wrk_cpu = f"{100 * measured.wrk_cpu_s / measured.duration_s:.0f}%"
        outbox = "-"
        if run.outbox is not None:
            box = run.outbox
            outbox = (
                f"{box.rows:,} = {box.acknowledged_events:,} + {box.surplus_events:,} "
                f"(<= {box.max_in_flight_events:,})"
            )
        verdict = "OK" if not run.problems() else "FAIL"
        lines.append(
            f"| {titles[run.scenario]} | {run.label} | {answers} | {errors} | {server_cpu} "
            f"| {wrk_cpu} | {outbox} | {verdict} |"
        )
    return "\n".join(lines)


def saturation_notes(runs: Sequence[ServerRun]) -> list[str]:
    """A baseline that did not keep its CPU busy was disturbed: its ratio is not trustworthy."""
    notes = []
    for run in runs:
        measured = run.measured
        if run.server != "noop" or measured is None or not measured.duration_s:
            continue
        busy = measured.server_cpu_s / measured.duration_s
        if busy < 0.9:
            notes.append(
                f"the no-op baseline ({run.scenario}) kept its CPU only {busy:.0%} busy; "
                "something else probably ran on the machine, so its rate (and the ratio) is "
                "unreliable; run again"
            )
    return notes


def _find(runs: Sequence[ServerRun], scenario: str, kind: ServerKind) -> ServerRun | None:
    for run in runs:
        if run.scenario == scenario and run.server == kind:
            return run
    return None


def targets(runs: Sequence[ServerRun], batch_events: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    noop = _find(runs, "single", "noop")
    relay = _find(runs, "single", "relay")
    if noop is not None and relay is not None:
        ratio = relay.req_per_s / noop.req_per_s if noop.req_per_s else 0.0
        found.append(
            {
                "target": f"1-event durable ingest >= {SINGLE_MIN_RATIO:.0%} of the no-op rate",
                "measured": f"{ratio:.0%} ({_num(relay.req_per_s)} / {_num(noop.req_per_s)} req/s)",
                "pass": ratio >= SINGLE_MIN_RATIO,
            }
        )
        p99 = relay.measured.latency_ms["p99"] if relay.measured else float("inf")
        found.append(
            {
                "target": f"1-event p99 latency < {SINGLE_MAX_P99_MS:.0f} ms",
                "measured": f"{p99:.2f} ms",
                "pass": p99 < SINGLE_MAX_P99_MS,
            }
        )
    batch = _find(runs, "batch", "relay")
    if batch is not None:
        found.append(
            {
                "target": f"{batch_events}-event requests >= {_num(BATCH_MIN_EVENTS_PER_S)} "
                "events/s",
                "measured": f"{_num(batch.events_per_s)} events/s "
                f"({_num(batch.req_per_s, 1)} req/s)",
                "pass": batch.events_per_s >= BATCH_MIN_EVENTS_PER_S,
            }
        )
    return found


def targets_table(found: Sequence[dict[str, Any]]) -> str:
    lines = ["| target | measured | result |", "|---|---|---|"]
    for item in found:
        lines.append(
            f"| {item['target']} | {item['measured']} | {'PASS' if item['pass'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest throughput of ci-relay against a no-op aiohttp server, with wrk."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of warm-up before each (0: none)"
    )
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--batch-events", type=int, default=1000, help="events per request in the batch scenario"
    )
    parser.add_argument(
        "--scenario",
        choices=["single", "batch", "big"],
        action="append",
        help="default: all (big: 5 MiB valid and all-invalid bodies, one at a time)",
    )
    parser.add_argument("--big-runs", type=int, default=5, help="POSTs of each 5 MiB body")
    parser.add_argument(
        "--wrk-timeout", type=int, default=60, help="wrk's per-request timeout, seconds"
    )
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where the outbox goes (default: $TMPDIR)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not put wrk and the server on separate CPUs"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="record the relay with py-spy (raw format) during its measured runs: "
        "PATH for 1-event requests, PATH-batch for the batch",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.big_runs < 1:
        parser.error("--big-runs must be >= 1")
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--duration, --connections and --threads must be >= 1, --warmup >= 0")
    if not 1 <= args.batch_events <= 1000:
        parser.error("--batch-events must be 1 to 1000 (the intake's limit per request)")
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (Debian: apt-get install wrk)")
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    return args


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(wrk's CPUs, the server's CPUs): the first available CPU for wrk, the rest for it."""
    available = sorted(os.sched_getaffinity(0))
    if no_pin or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def _describe_cpus(cpus: set[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cpus)) if cpus else "any"


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    cpus = cpu_plan(args.no_pin)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else ["ingest.py", *argv])])
    info = machine()
    chosen = args.scenario or ["single", "batch", "big"]
    started: list[Server] = []
    runs: list[ServerRun] = []
    big_runs: list[BigRun] = []
    with tempfile.TemporaryDirectory(prefix="ci-relay-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        info["outbox_filesystem"] = filesystem_of(workdir.resolve())
        scenarios = [s for s in build_scenarios(args.batch_events) if s.key in chosen]
        try:
            for scenario in scenarios:
                _progress(f"{scenario.title} ({len(scenario.body):,} bytes per request)")
                for kind in ("noop", "relay"):
                    runs.append(run_server(args, scenario, kind, workdir, cpus, started))
            if "big" in chosen:
                for big in build_big_bodies():
                    _progress(
                        f"5 MiB body: {big.title} ({len(big.body):,} bytes) x {args.big_runs}"
                    )
                    big_runs.append(run_big(args, big, workdir, cpus[1], started))
        finally:
            for server in list(started):
                server.stop()

    found = targets(runs, args.batch_events) + big_targets(big_runs)
    problems = {f"{run.scenario} / {run.label}": run.problems() for run in runs}
    problems |= {f"big / {run.title}": run.problems() for run in big_runs}
    broken = any(problems.values())
    missed = not all(item["pass"] for item in found)

    wrk_cpus, server_cpus = cpus
    print("## ci-relay ingest benchmark\n")
    print(f"- command: `{command}` (cwd {Path.cwd()})")
    print(
        f"- machine: nproc={info['nproc']}, {info['cpu']}, Linux {info['kernel']}; "
        f"{info['python']}; event loop: {info['event_loop']}; aiohttp {info['aiohttp']}; "
        f"{info['wrk']}"
    )
    print(
        f"- load: wrk {args.threads} thread(s), {args.connections} keep-alive connections, "
        f"{args.warmup}s warm-up + {args.duration}s measured per server; "
        f"wrk on CPU {_describe_cpus(wrk_cpus)}, servers on CPU {_describe_cpus(server_cpus)}"
    )
    print(
        f"- relay: outbox synchronous={args.synchronous}, WAL, fresh per scenario, on "
        f"{info['outbox_filesystem']}; logs JSON at level warning; no API key (nothing sent); "
        f"code at {info['relay_revision']}"
    )
    example = next((r.measured.command for r in runs if r.measured), None)
    if example:
        print(f"- wrk command (e.g.): `{shlex.join(example)}`")
    if runs:
        print()
        print(results_table(runs, scenarios))
    print()
    print(
        "req/s counts 202 answers of the measured run; events/s = req/s x events per request; "
        "latencies are wrk's (closed loop, no coordinated-omission correction); "
        "vs no-op = relay rate / no-op rate in the same scenario."
    )
    for note in saturation_notes(runs):
        print(f"\nnote: {note}")
    if big_runs:
        print()
        print(big_table(big_runs))
        print()
        print(
            f"Each 5 MiB body is POSTed {args.big_runs} times, one at a time, to a fresh relay "
            "(after one small request); ms is until the whole answer arrived; /health is polled "
            "back to back on another connection meanwhile (its worst latency over the runs, and "
            "the fewest answers in one run); peak RSS growth is VmHWM at the end minus VmRSS "
            "before the first big body; RSS kept is VmRSS at the end minus that."
        )
    print()
    print(targets_table(found))
    if runs:
        print()
        print(checks_table(runs, scenarios))
    print()
    print(
        "Outbox check: after SIGTERM the relay's outbox must hold every event it answered 202 "
        "for (pre-flight, warm-up and measured runs), and at most one request per connection "
        "per wrk run more (requests in flight when wrk stopped: committed, never counted), "
        "in whole requests."
    )
    if broken:
        print("\n### CORRECTNESS FAILURES\n")
        for name, found_problems in problems.items():
            for problem in found_problems:
                print(f"- **{name}**: {problem}")
        for run in runs:
            if run.problems() and run.log_tail:
                print(f"\nlast log lines of {run.label} ({run.scenario}):")
                for line in run.log_tail:
                    print(f"    {line}")
    if args.profile:
        print(
            f"\npy-spy profiles of the relay's measured runs: {args.profile} (1-event), "
            f"{profile_path(args.profile, 'batch')} (batch); the relay was sampled while "
            "measured, so its numbers in this run are slightly low."
        )
    status = EXIT_BROKEN if broken else EXIT_MISSED if missed else EXIT_OK
    print(
        f"\nresult: {'BROKEN' if broken else 'TARGETS MISSED' if missed else 'OK'} "
        f"(exit status {status})"
    )
    if args.json:
        document = {
            "command": command,
            "machine": info,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpus": {"wrk": sorted(wrk_cpus or []), "servers": sorted(server_cpus or [])},
            "runs": [run.as_dict() for run in runs],
            "big_runs": [asdict(run) for run in big_runs],
            "targets": found,
            "problems": problems,
            "status": status,
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
