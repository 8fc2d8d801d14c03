"""Run every benchmark and write one markdown report: the machine, then each figure beside
its same-run baseline.

    bench/run [--quick] [--only NAME ...] [--out PATH]

Each benchmark script runs as a subprocess of its own (in its own process group, ended by
that id when it outlives its timeout), in this interpreter, from the repository root. Its
JSON is read where it writes one (``--json PATH``), its markdown tables otherwise; the report
gives a summary table of headline figures (value, baseline, ratio), then each script's own
tables and any warning it printed (saturation notes, failed checks). A script whose tool is
missing (wrk, valgrind) is reported as skipped with the reason. ``--quick`` uses short
durations and small sizes: a trial of the whole chain, not figures to quote.

Exit status: 0 when every benchmark ran (or was skipped for a missing tool), 1 when one
failed or timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from run_report import Outcome, analyse, render

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STDERR_TAIL_LINES = 15


@dataclass(frozen=True)
class Benchmark:
    """One script, how to run it fully and quickly, and what it needs."""

    name: str
    script: str
    full: list[str]
    quick: list[str]
    timeout_s: float
    quick_timeout_s: float
    json: bool = False
    tools: tuple[str, ...] = ()
    # Exit statuses that still mean "ran": ingest.py exits 3 when only a target was missed.
    statuses: dict[int, str] = field(default_factory=lambda: {0: "ok"})


BENCHMARKS = [
    Benchmark(
        "ingest",
        "ingest.py",
        ["--duration", "10"],
        ["--duration", "5", "--warmup", "1", "--big-runs", "1"],
        1800,
        600,
        json=True,
        tools=("wrk",),
        statuses={0: "ok", 3: "targets missed"},
    ),
    Benchmark(
        "ingest_instructions",
        "ingest_instructions.py",
        [],
        ["--requests", "200"],
        3600,
        1200,
        tools=("valgrind",),
    ),
    Benchmark(
        "drain",
        "drain.py",
        ["--events", "200000"],
        ["--events", "20000", "--skip-memory"],
        1800,
        600,
        json=True,
    ),
    Benchmark("parse", "parse.py", [], ["--rounds", "5", "--loops", "5"], 600, 300),
    Benchmark(
        "replay",
        "replay.py",
        ["--dead-letters", "300000", "--runs", "3"],
        ["--dead-letters", "20000", "--runs", "1"],
        3600,
        600,
    ),
    Benchmark(
        "connections",
        "connections.py",
        ["--runs", "5", "--duration", "5"],
        ["--runs", "1", "--duration", "2"],
        1200,
        300,
        tools=("wrk",),
    ),
    Benchmark(
        "connections-slow",
        "connections.py",
        ["--runs", "5", "--duration", "5", "--slow", "300"],
        ["--runs", "1", "--duration", "2", "--slow", "50"],
        1200,
        300,
        tools=("wrk",),
    ),
    Benchmark(
        "sidecar",
        "sidecar.py",
        ["--runs", "3"],
        ["--runs", "1", "--duration", "2", "--backlog", "50000", "--drain-events", "30000"],
        5400,
        900,
        tools=("wrk",),
    ),
    Benchmark("run_overhead", "run_overhead.py", ["--runs", "20"], ["--runs", "5"], 600, 300),
]


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model"):
                return value.strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return "unknown"


def _mount_of(path: Path) -> str:
    """The filesystem type, device, mount point and options that hold ``path``."""
    best = ("/", "?", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, options = line.split()[:4]
            mount = mount.replace("\\040", " ")
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device, options)
    return f"{best[1]} on {best[2]}, mounted at {best[0]} ({best[3]})"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def machine(load_before: str, load_after: str) -> dict[str, str]:
    """What the figures depend on, read from this machine."""
    uvloop = _version("uvloop")
    tmp = Path(tempfile.gettempdir()).resolve()
    return {
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} available to this process)",
        "CPU": _cpu_model(),
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "event loop": f"uvloop {uvloop}" if uvloop != "not installed" else "asyncio",
        "aiohttp": _version("aiohttp"),
        "SQLite": f"{sqlite3.sqlite_version} (Python's sqlite3 module)",
        "temp dir": f"{tmp}: {_mount_of(tmp)}",
        "wrk": shutil.which("wrk") or "not found",
        "valgrind": shutil.which("valgrind") or "not found",
        "load average (1 / 5 / 15 min) before": load_before,
        "load average (1 / 5 / 15 min) after": load_after,
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def commit() -> str:
    sha = _git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    return f"{sha} (with uncommitted changes)" if _git("status", "--porcelain") else sha


# --------------------------------------------------------------------------- running


def _end(process: subprocess.Popen[bytes]) -> None:
    """End the benchmark's process group (created for it at start) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_one(bench: Benchmark, quick: bool, work: Path) -> Outcome:
    """Run one benchmark script and read what it printed (and wrote) into an outcome."""
    argv = [sys.executable, str(BENCH / bench.script), *(bench.quick if quick else bench.full)]
    json_path = work / f"{bench.name}.json"
    if bench.json:
        argv += ["--json", str(json_path)]
    shown = shlex.join(["python", f"bench/{bench.script}", *argv[2:]]).replace(str(work), "DIR")
    outcome = Outcome(bench.name, shown, "ok")
    missing = [tool for tool in bench.tools if shutil.which(tool) is None]
    if missing:
        outcome.status, outcome.reason = "skipped", f"{', '.join(missing)} not on PATH"
        return outcome
    timeout = bench.quick_timeout_s if quick else bench.timeout_s
    out_path, err_path = work / f"{bench.name}.out", work / f"{bench.name}.err"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            code: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _end(process)
    outcome.seconds = time.monotonic() - started
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    data: Any = None
    if bench.json and json_path.exists():
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(json_path.read_bytes())
    if code is None:
        outcome.status, outcome.reason = "timed out", f"after {timeout:.0f} s"
    elif code in bench.statuses:
        outcome.status = bench.statuses[code]
    else:
        outcome.status, outcome.reason = "failed", f"exit status {code}"
    analyse(outcome, stdout, stderr, data)
    if outcome.status in ("failed", "timed out"):
        tail = [line for line in stderr.splitlines() if line.strip()][-STDERR_TAIL_LINES:]
        outcome.warnings += [f"stderr: {line}" for line in tail]
    return outcome


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations and small sizes")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"repeatable; one of {', '.join(names)}")  # fmt: skip
    parser.add_argument("--out", type=Path, metavar="PATH", help="default: stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    started = datetime.datetime.now(datetime.UTC)
    load_before = _load()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="ci-relay-bench-run-") as tmp:
        for bench in chosen:
            print(f"bench/run: {bench.name} ...", file=sys.stderr, flush=True)
            outcome = run_one(bench, args.quick, Path(tmp))
            print(f"bench/run: {bench.name}: {outcome.status}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    header = {
        "date": f"{started:%Y-%m-%d %H:%M} UTC, {_took(started)}",
        "commit": commit(),
        "reproduce": f"`{shlex.join(['bench/run', *given])}` (from the repository root, with "
        "the project's virtualenv in .venv, and Debian's wrk and valgrind on PATH)",
        "run": "quick (short durations, small sizes: a trial, not figures to quote)"
        if args.quick
        else "full",
    }
    report = render(machine(load_before, _load()), header, outcomes)
    if args.out:
        args.out.write_text(report)
    else:
        sys.stdout.write(report)
    return 1 if any(o.status in ("failed", "timed out") for o in outcomes) else 0


def _took(started: datetime.datetime) -> str:
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    return f"{seconds / 60:.1f} min in all"


if __name__ == "__main__":
    raise SystemExit(main())
