"""Instructions per ingest request, counted by callgrind: a figure the machine's load cannot move.

``bench/ingest.py`` measures requests per second, which on a shared 2-core machine moves
with whatever else runs. This counts the user-space instructions the server executes per
1-event request instead (``valgrind --tool=callgrind``), for the relay and for the no-op
aiohttp baseline (``bench/noop_server.py``), so that a change to the ingest path (metrics,
say) can be compared in instructions: the same code, inputs and environment give the same
count whatever the load.

Each server runs under callgrind twice, answering N and then 2N sequential requests on
one keep-alive connection; the difference of the two totals divided by N is the cost of
one request, start-up and shutdown cancelled out. The relay runs with a fresh outbox,
``synchronous = FULL`` and no API key (nothing is sent upstream). Kernel work (the fsync
itself) is not counted: callgrind sees user space only.

    python bench/ingest_instructions.py [--requests 2000] [--source DIR ...]

``--source DIR`` (repeatable) also measures the relay of another checkout (its own
``.venv``), e.g. the commit before a change, in the same run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PIPELINE_PATH = "/api/v2/ci/pipeline"
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Server:
    name: str
    python: Path
    argv: tuple[str, ...]
    cwd: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def body() -> bytes:
    """One pipeline event that ended 30 s ago, as the README's example."""
    sys.path.insert(0, str(ROOT))
    from relay.testing.samples import event, request

    return orjson.dumps(request(event("pipeline")))


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not listening after {timeout_s} s")


def instructions(server: Server, requests: int, payload: bytes, workdir: Path) -> int:
    """Total instructions of one server process answering ``requests`` POSTs."""
    port = free_port()
    out = workdir / f"callgrind.{server.name}.{requests}.out"
    config = workdir / f"{server.name}-{requests}.toml"
    outbox = workdir / f"{server.name}-{requests}.db"
    config.write_text(
        f'[server]\nport = {port}\n[outbox]\npath = "{outbox}"\n[log]\nlevel = "warning"\n'
    )
    argv = [a.format(port=port, config=config, noop=HERE / "noop_server.py") for a in server.argv]
    env = dict(os.environ, PYTHONMALLOC="malloc")  # valgrind sees each allocation
    env.pop("DD_API_KEY", None)  # nothing goes upstream
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(server.python), *argv],
        cwd=server.cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process, timeout_s=300)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        for _ in range(requests):
            connection.request("POST", PIPELINE_PATH, payload, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 202:
                raise RuntimeError(f"{server.name} answered {answer.status}")
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    found = _TOTALS.search(out.read_bytes())
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found[1])


def per_request(server: Server, requests: int, payload: bytes, workdir: Path) -> float:
    once = instructions(server, requests, payload, workdir)
    twice = instructions(server, 2 * requests, payload, workdir)
    return (twice - once) / requests


def relay_server(name: str, source: Path) -> Server:
    python = source / ".venv" / "bin" / "python"
    return Server(name, python, ("-m", "relay", "serve", "--config", "{config}"), source)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="N (default 2000)")
    parser.add_argument("--source", type=Path, action="append", default=[], metavar="DIR")
    args = parser.parse_args()
    payload = body()
    servers = [
        Server("noop", Path(sys.executable), ("{noop}", "--port", "{port}"), ROOT),
        relay_server("relay", ROOT),
        *(relay_server(f"relay@{d.name}", d.resolve()) for d in args.source),
    ]
    with tempfile.TemporaryDirectory(prefix="ci-relay-instr-") as tmp:
        costs = {s.name: per_request(s, args.requests, payload, Path(tmp)) for s in servers}
    noop = costs["noop"]
    print(f"instructions per 1-event request (callgrind, N={args.requests}, 2N-N difference)")
    print()
    print("| server | instructions/request | no-op / server |")
    print("|---|---:|---:|")
    for name, cost in costs.items():
        print(f"| {name} | {cost:,.0f} | {noop / cost:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
