"""What ``ci-relay run`` adds to a job step: wall time of a wrapped ``true`` against bare ones.

    python bench/run_overhead.py [--runs 20]

Starts ``bench/noop_server.py`` on a free port of 127.0.0.1 as the relay (it answers 202
like the relay, so the figure is the wrapper's cost, not the outbox's), then times, in
alternation so that the machine's load hits every row alike:

- ``true`` (the command alone),
- ``python -c pass`` (the interpreter's own start),
- ``python -c "import relay.cli"`` (what the CLI imports before any subcommand runs),
- ``ci-relay run -- true`` in a GitHub Actions environment and a real git checkout, posting
  its job event to the stand-in relay.

Prints min / median / max in milliseconds and the median's excess over ``true``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _checkout(path: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(path.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@example.com",
    }
    path.mkdir()
    for args in (("init", "-q"), ("commit", "-q", "--allow-empty", "-m", "x")):
        subprocess.run(["git", "-C", str(path), *args], env=env, check=True)
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _time(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stderr:
        raise SystemExit(f"{command} failed: {done.returncode} {done.stderr!r}")
    return elapsed * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "noop_server.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # the "listening" line
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp) / "checkout"
            sha = _checkout(cwd)
            env = {
                "PATH": os.environ["PATH"],
                "HOME": tmp,
                "GITHUB_ACTIONS": "true",
                "GITHUB_REPOSITORY": "acme/engine",
                "GITHUB_RUN_ID": "1",
                "GITHUB_RUN_ATTEMPT": "1",
                "GITHUB_WORKFLOW": "CI",
                "GITHUB_JOB": "bench",
                "GITHUB_SHA": sha,
                "GITHUB_REF": "refs/heads/main",
                "CI_RELAY_URL": f"http://127.0.0.1:{port}",
            }
            rows = {
                "true": ["true"],
                "python -c pass": [sys.executable, "-c", "pass"],
                "import relay.cli": [sys.executable, "-c", "import relay.cli"],
                "ci-relay run -- true": [sys.executable, "-m", "relay", "run", "--", "true"],
            }
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):
                for name, command in rows.items():
                    times[name].append(_time(command, env, cwd))
    finally:
        server.terminate()
        server.wait(10)
    base = statistics.median(times["true"])
    print(f"{args.runs} runs each, alternating; milliseconds")
    print("| command | min | median | max | median over `true` |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {min(values):.0f} | {median:.0f} | {max(values):.0f} "
            f"| {median - base:+.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
