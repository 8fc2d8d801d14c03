"""Webhook benchmark: GitLab Pipeline Hooks on POST /webhooks/gitlab against the same events
posted straight to POST /api/v2/ci/pipeline, in the same run, on the same kind of relay.

Each hook is a GitLab Pipeline Hook shaped like the recorded one
(``tests/webhooks/payloads/gitlab/pipeline.json``) whose pipeline has ``--builds`` finished
builds (50 by default) over five stages, with times just before now (the intake refuses ends
older than 18 hours). Every hook is a pipeline of its own (its own pipeline id, build ids
and ``X-Gitlab-Event-UUID``), so deduplication lets each store all it makes. The direct rows
post the very events each hook maps to (``map_gitlab``), one request per hook holding all of
them as ``{"data": [...]}``, so both paths commit the same rows.

For each concurrency (``--concurrency 1 8``: that many clients posting back to back on
keep-alive connections), in this order:

- no-op aiohttp (``bench/noop_server.py``: reads the body, answers 202) given the hook
  bodies: what this client and HTTP stack manage on this machine, the ceiling;
- direct: ``ci-relay serve`` on a fresh outbox, the hooks' events on the pipeline path;
- webhook: ``ci-relay serve`` on another fresh outbox, the hooks on ``/webhooks/gitlab``;
  then, on the same relay, the same hooks again twice, storing nothing: redelivered with
  the same ``X-Gitlab-Event-UUID`` (a retry: the delivery's key was seen), and as new
  deliveries of the same pipelines (GitLab sends a hook per status change: every event's
  key was seen).

Each row posts ``--warmup`` hooks untimed, then ``--hooks`` timed ones (400 by default), and
stops after ``--max-seconds`` even when hooks are left. Every answer is checked (202 and
the hook's event count stored, 200 ``duplicate`` for the redeliveries) and so is each
outbox after SIGTERM (counted with sqlite3: every hook's events, no dead letter). The relays
store with ``synchronous`` FULL by default, have no API key (nothing is sent) and log JSON at
level info; with two CPUs or more, the clients run on the first and the servers on another.

    python bench/webhooks.py [--hooks 400] [--warmup 20] [--builds 50]
                             [--concurrency 1 8] [--max-seconds 20]
                             [--synchronous FULL|NORMAL] [--json PATH]

Exit status: 0 all checks pass, 1 a check failed (an answer or an outbox that is not what
was posted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.contract.intake import PIPELINE_PATH  # noqa: E402
from relay.testing.process import RelayProcess, relay_free_env, write_config  # noqa: E402
from relay.webhooks.gitlab import PIPELINE_HOOK, map_gitlab  # noqa: E402

BENCH = Path(__file__).resolve().parent
NOOP_SERVER = BENCH / "noop_server.py"
HOST = "127.0.0.1"
WEBHOOK_PATH = "/webhooks/gitlab"
GITLAB_TOKEN = "bench-gitlab-token-0123456789"  # noqa: S105 (the benchmark's own secret)
HTTP_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0

EXIT_OK = 0
EXIT_BROKEN = 1

# Stages in pipeline order and their share of the builds.
STAGES = (("build", 0.2), ("test", 0.5), ("lint", 0.1), ("package", 0.1), ("deploy", 0.1))
PROJECT_ID = 4242
FIRST_PIPELINE_ID = 900_000_000
FIRST_BUILD_ID = 7_000_000_000


# --------------------------------------------------------------------------- hooks


def _gitlab_time(moment: datetime) -> str:
    """A time as GitLab's real hooks write it: ``2025-04-01 18:31:49 UTC``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _user() -> dict[str, Any]:
    return {
        "id": 42,
        "name": "User1",
        "username": "user1",
        "email": "user1@example.com",
        "avatar_url": "http://www.gravatar.com/avatar/e32bd13e2add097461cb96824b7a829c?s=80&d=identicon",
    }


def _build(build_id: int, number: int, stage: str, began: datetime) -> dict[str, Any]:
    """One finished build: mostly successes, an allowed failure, a manual job never played."""
    created = began + timedelta(seconds=number)
    started = created + timedelta(seconds=5 + number % 7)
    finished = started + timedelta(seconds=30 + number % 90)
    status, manual, allow_failure = "success", False, False
    if number % 25 == 7:
        status, allow_failure = "failed", True
    if stage == "deploy" and number % 5 == 4:
        status, manual = "manual", True
    build: dict[str, Any] = {
        "id": build_id,
        "stage": stage,
        "name": f"{stage}-{number:03d}",
        "status": status,
        "created_at": _gitlab_time(created),
        "started_at": None if manual else _gitlab_time(started),
        "finished_at": None if manual else _gitlab_time(finished),
        "duration": None if manual else (finished - started).total_seconds(),
        "queued_duration": (started - created).total_seconds(),
        "failure_reason": "script_failure" if status == "failed" else None,
        "when": "manual" if manual else "on_success",
        "manual": manual,
        "allow_failure": allow_failure or manual,
        "user": _user(),
        "runner": {
            "id": 380987 + number % 4,
            "description": f"shared-runners-manager-{number % 4}.gitlab.com",
            "runner_type": "instance_type",
            "active": True,
            "is_shared": True,
            "tags": ["docker", "gce"],
        },
        "artifacts_file": {"filename": None, "size": None},
    }
    if stage == "deploy":
        build["environment"] = {
            "name": "production",
            "action": "start",
            "deployment_tier": "production",
        }
    return build


def pipeline_hook(index: int, builds: int, now: datetime) -> dict[str, Any]:
    """Pipeline ``index``'s Pipeline Hook (status success) with ``builds`` finished builds,
    shaped like GitLab's (the recorded ``pipeline.json``), ending a minute before ``now``."""
    pipeline_id = FIRST_PIPELINE_ID + index
    began = now - timedelta(minutes=30)
    items: list[dict[str, Any]] = []
    number = 0
    for stage, share in STAGES:
        count = max(1, round(builds * share)) if stage != STAGES[-1][0] else builds - number
        for _ in range(max(0, count)):
            if number == builds:
                break
            build_id = FIRST_BUILD_ID + index * builds + number
            items.append(_build(build_id, number, stage, began))
            number += 1
    sha = f"{index:040x}"
    web_url = "https://gitlab.example.com/platform/engine"
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": pipeline_id,
            "iid": index + 1,
            "name": "Nightly build",
            "ref": "main",
            "tag": False,
            "sha": sha,
            "before_sha": "0" * 40,
            "source": "push",
            "status": "success",
            "detailed_status": "passed",
            "stages": [stage for stage, _ in STAGES],
            "created_at": _gitlab_time(began),
            "finished_at": _gitlab_time(now - timedelta(minutes=1)),
            "duration": 1740,
            "queued_duration": 12,
            "variables": [{"key": "NESTOR_PROD_ENVIRONMENT", "value": "us-west-1"}],
            "url": f"{web_url}/-/pipelines/{pipeline_id}",
        },
        "merge_request": None,
        "user": _user(),
        "project": {
            "id": PROJECT_ID,
            "name": "Engine",
            "description": "Atque in sunt eos similique dolores voluptatem.",
            "web_url": web_url,
            "avatar_url": None,
            "git_ssh_url": "git@gitlab.example.com:platform/engine.git",
            "git_http_url": f"{web_url}.git",
            "namespace": "Platform",
            "visibility_level": 20,
            "path_with_namespace": "platform/engine",
            "default_branch": "main",
            "ci_config_path": None,
        },
        "commit": {
            "id": sha,
            "message": "Speed up the nightly build\n",
            "title": "Speed up the nightly build",
            "timestamp": (began - timedelta(minutes=5)).isoformat(),
            "url": f"{web_url}/-/commit/{sha}",
            "author": {"name": "User", "email": "user@gitlab.com"},
        },
        "builds": items,
    }


@dataclass(frozen=True)
class Hook:
    """One pipeline's hook as both paths post it."""

    body: bytes  # the Pipeline Hook
    delivery: str  # its X-Gitlab-Event-UUID
    redelivery: str  # the X-Gitlab-Event-UUID of a later hook of the same pipeline
    direct: bytes  # {"data": [the events the hook maps to]}
    events: int


def make_hooks(count: int, builds: int) -> list[Hook]:
    """``count`` hooks of distinct pipelines, each with the body of its mapped events."""
    now = datetime.now(UTC)
    hooks = []
    for index in range(count):
        payload = pipeline_hook(index, builds, now)
        mapped = map_gitlab(PIPELINE_HOOK, payload)
        if mapped.ignored or mapped.unusable or not mapped.events:
            raise RuntimeError(f"the generated hook maps to no event: {mapped}")
        hooks.append(
            Hook(
                body=orjson.dumps(payload),
                delivery=str(uuid.uuid4()),
                redelivery=str(uuid.uuid4()),
                direct=orjson.dumps({"data": list(mapped.events)}),
                events=len(mapped.events),
            )
        )
    return hooks


def hook_headers(delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.8.0",
        "X-Gitlab-Event": PIPELINE_HOOK,
        "X-Gitlab-Event-UUID": delivery,
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Token": GITLAB_TOKEN,
    }


DIRECT_HEADERS = {"Content-Type": "application/json"}

# A request: its path, its body and its headers.
Request = tuple[str, bytes, dict[str, str]]


def direct_requests(hooks: Sequence[Hook]) -> list[Request]:
    return [(PIPELINE_PATH, hook.direct, DIRECT_HEADERS) for hook in hooks]


def webhook_requests(hooks: Sequence[Hook], redelivery: bool = False) -> list[Request]:
    return [
        (WEBHOOK_PATH, h.body, hook_headers(h.redelivery if redelivery else h.delivery))
        for h in hooks
    ]


def noop_requests(hooks: Sequence[Hook]) -> list[Request]:
    # The no-op server routes only the pipeline path; it reads any body the same way.
    return [(PIPELINE_PATH, h.body, hook_headers(h.delivery)) for h in hooks]


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """The answers to one loop of requests."""

    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def count(self) -> int:
        return len(self.answers)

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return 0.0
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def load(
    session: aiohttp.ClientSession,
    base_url: str,
    requests: Sequence[Request],
    concurrency: int,
    deadline: float,
) -> Load:
    """``requests`` posted by ``concurrency`` clients back to back, each taking the next one,
    until none is left or ``deadline`` (monotonic) has passed. Answers in the order sent."""
    result = Load()
    pending = iter(enumerate(requests))
    answers: dict[int, tuple[int, bytes]] = {}
    latencies: dict[int, float] = {}

    async def client() -> None:
        for index, (path, body, headers) in pending:
            if time.monotonic() >= deadline:
                result.timed_out = True
                return
            started = time.perf_counter()
            try:
                async with session.post(base_url + path, data=body, headers=headers) as answer:
                    text = await answer.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            latencies[index] = time.perf_counter() - started
            answers[index] = (answer.status, text)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.answers = [answers[i] for i in sorted(answers)]
    result.latencies_s = [latencies[i] for i in sorted(latencies)]
    return result


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This thread (the clients' event loop) on ``cpus`` for the block."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(the clients' CPUs, the servers' CPUs): the first CPU for the clients, the rest for
    the servers, when there are two or more."""
    available = sorted(os.sched_getaffinity(0))
    if no_pin or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def _on(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def relay_config(directory: Path, name: str, synchronous: str) -> tuple[Path, Path]:
    """A config for a relay on a fresh outbox ``name``.db; (config, outbox)."""
    outbox = directory / f"{name}.db"
    config = write_config(
        directory / f"{name}.toml",
        server={"host": HOST, "port": 0},
        # Backpressure (503 past max_events or max_bytes) is not what is measured.
        outbox={
            "path": str(outbox),
            "synchronous": synchronous,
            "max_events": 1_000_000_000,
            "max_bytes": 1 << 40,
        },
        # No API key is set (the relay's variables are removed from its environment): nothing
        # is sent. Should one appear, a closed local port keeps the events on this machine.
        upstream={"url": "http://127.0.0.1:9"},
        webhooks={"gitlab_token": GITLAB_TOKEN},
        log={"format": "json", "level": "info"},
    )
    return config, outbox


class NoopServer:
    """``bench/noop_server.py`` started here, ended by its own pid."""

    def __init__(self, cpus: set[int] | None) -> None:
        self.cpus = cpus
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NoopServer:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(NOOP_SERVER),
            "--host",
            HOST,
            "--port",
            "0",
            stdout=asyncio.subprocess.PIPE,
            env=relay_free_env(),
            preexec_fn=_on(self.cpus),
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT_S)
        self.port = int(orjson.loads(line)["port"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            os.kill(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()


def outbox_counts(path: Path) -> tuple[int, int]:
    """(events, dead letters) in the outbox at ``path``."""
    with closing(sqlite3.connect(path)) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return int(events), int(dead)


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One path at one concurrency: its measured loop and what it must have stored."""

    key: str  # noop, direct, webhook, redelivered, new_delivery
    label: str
    concurrency: int
    events_per_hook: int
    hooks: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    stored_events: int = 0  # new events the answers of the measured loop report
    timed_out: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def hooks_per_s(self) -> float:
        return self.hooks / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.hooks_per_s * self.events_per_hook


def _check_answers(row: Row, run: Load, what: str, hooks: Sequence[Hook]) -> None:
    """Every answer of ``run`` is what ``row``'s path must answer for its hook."""
    if run.errors:
        row.problems.append(f"{what}: {len(run.errors)} requests failed, e.g. {run.errors[0]}")
    for (status, text), hook in zip(run.answers, hooks, strict=False):
        problem = _answer_problem(row.key, status, text, hook.events)
        if problem:
            row.problems.append(f"{what}: {problem}")
            return


def _answer_problem(key: str, status: int, text: bytes, events: int) -> str | None:
    if key in ("noop", "direct"):
        return None if status == 202 else f"answered {status} {text[:300]!r}"
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return f"answered {status} {text[:300]!r}"
    if key == "webhook":
        expected = (202, {"status": "stored", "events": events, "dead_letters": 0})
    else:
        expected = (200, {"status": "duplicate", "events": 0, "dead_letters": 0})
    if (status, answer) != expected:
        return f"answered {status} {answer!r}, expected {expected[0]} {expected[1]!r}"
    return None


def _stored_by(run: Load) -> int:
    total = 0
    for status, text in run.answers:
        if status in (200, 202) and text.startswith(b"{"):
            total += int(orjson.loads(text).get("events", 0))
    return total


async def measure(
    row: Row,
    session: aiohttp.ClientSession,
    base_url: str,
    warmup: Sequence[Request],
    measured: Sequence[Request],
    hooks: Sequence[Hook],
    max_seconds: float,
) -> int:
    """Warm-up then the measured loop into ``row``; how many hooks were answered in all."""
    deadline = time.monotonic() + max_seconds
    warm = await load(session, base_url, warmup, row.concurrency, deadline)
    _check_answers(row, warm, "warm-up", hooks)
    run = await load(session, base_url, measured, row.concurrency, deadline)
    _check_answers(row, run, "measured", hooks[len(warmup) :])
    row.hooks, row.seconds = run.count, run.seconds
    row.p50_ms, row.p99_ms = run.percentile_ms(0.50), run.percentile_ms(0.99)
    row.stored_events = _stored_by(run)
    row.timed_out = warm.timed_out or run.timed_out
    _progress(
        f"  {row.label}, {row.concurrency} client(s): {row.hooks} hooks in {row.seconds:.2f} s"
    )
    return warm.count + run.count


async def run_noop(
    args: argparse.Namespace, concurrency: int, hooks: Sequence[Hook], cpus: set[int] | None
) -> Row:
    row = Row("noop", "no-op aiohttp, hook bodies", concurrency, hooks[0].events)
    requests = noop_requests(hooks)
    async with NoopServer(cpus) as noop, _session(concurrency) as session:
        await measure(
            row,
            session,
            f"http://{HOST}:{noop.port}",
            requests[: args.warmup],
            requests[args.warmup :],
            hooks,
            args.max_seconds,
        )
    return row


async def run_direct(
    args: argparse.Namespace,
    concurrency: int,
    hooks: Sequence[Hook],
    workdir: Path,
    cpus: set[int] | None,
) -> Row:
    label = f"direct: POST {PIPELINE_PATH} ({args.synchronous})"
    row = Row("direct", label, concurrency, hooks[0].events)
    config, outbox = relay_config(workdir, f"direct-{concurrency}", args.synchronous)
    requests = direct_requests(hooks)
    relay = RelayProcess(config, preexec_fn=_on(cpus))
    async with relay, _session(concurrency) as session:
        answered = await measure(
            row,
            session,
            f"http://{HOST}:{relay.port}",
            requests[: args.warmup],
            requests[args.warmup :],
            hooks,
            args.max_seconds,
        )
        _stopped(row, await relay.terminate(STOP_TIMEOUT_S))
    row.stored_events = row.hooks * row.events_per_hook
    _check_outbox(row, outbox, answered * row.events_per_hook)
    return row


async def run_webhooks(
    args: argparse.Namespace,
    concurrency: int,
    hooks: Sequence[Hook],
    workdir: Path,
    cpus: set[int] | None,
) -> list[Row]:
    """The hooks stored, then redelivered twice on the same relay (nothing stored)."""
    sync = args.synchronous
    per_hook = hooks[0].events
    stored = Row("webhook", f"webhook: POST {WEBHOOK_PATH} ({sync})", concurrency, per_hook)
    again = Row("redelivered", f"webhook redelivered, same UUID ({sync})", concurrency, per_hook)
    later = Row("new_delivery", f"webhook, same pipeline, new UUID ({sync})", concurrency, per_hook)
    config, outbox = relay_config(workdir, f"webhook-{concurrency}", sync)
    relay = RelayProcess(config, preexec_fn=_on(cpus))
    async with relay, _session(concurrency) as session:
        base_url = f"http://{HOST}:{relay.port}"
        requests = webhook_requests(hooks)
        answered = await measure(
            stored,
            session,
            base_url,
            requests[: args.warmup],
            requests[args.warmup :],
            hooks,
            args.max_seconds,
        )
        # Only the hooks stored are sent again: a duplicate of each.
        sent = hooks[:answered]
        for row, redelivery in ((again, False), (later, True)):
            requests = webhook_requests(sent, redelivery=redelivery)
            warm = min(args.warmup, len(requests))
            await measure(
                row,
                session,
                base_url,
                requests[:warm],
                requests[warm:],
                sent,
                args.max_seconds,
            )
        _stopped(stored, await relay.terminate(STOP_TIMEOUT_S))
    _check_outbox(stored, outbox, sum(hook.events for hook in sent))
    return [stored, again, later]


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
    )


def _stopped(row: Row, status: int) -> None:
    if status != 0:
        row.problems.append(f"the relay exited with status {status} after SIGTERM")


def _check_outbox(row: Row, outbox: Path, expected: int) -> None:
    events, dead = outbox_counts(outbox)
    if events != expected or dead:
        row.problems.append(
            f"the outbox holds {events:,} events and {dead:,} dead letters, "
            f"expected {expected:,} events and none"
        )


# --------------------------------------------------------------------------- report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model"):
                return value.strip()
    return platform.processor() or "unknown CPU"


def _revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "--no-optional-locks", "status", "--porcelain", "relay"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} + uncommitted changes in relay/" if changed else head


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def results_table(rows: Sequence[Row]) -> str:
    lines = [
        "| path | concurrency | hooks | hooks/s | events/s | p50 ms | p99 ms | vs direct "
        "| events stored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct = _find(rows, "direct", row.concurrency)
        ratio = row.hooks_per_s / direct.hooks_per_s if direct and direct.hooks_per_s else 0.0
        stored = "-" if row.key == "noop" else _num(row.stored_events)
        mark = " (time bound)" if row.timed_out else ""
        lines.append(
            f"| {row.label} | {row.concurrency} | {row.hooks:,}{mark} "
            f"| {_num(row.hooks_per_s)} | {_num(row.events_per_s)} | {row.p50_ms:.2f} "
            f"| {row.p99_ms:.2f} | {ratio:.2f} | {stored} |"
        )
    return "\n".join(lines)


def _find(rows: Sequence[Row], key: str, concurrency: int) -> Row | None:
    return next((r for r in rows if r.key == key and r.concurrency == concurrency), None)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hooks", type=int, default=400, help="timed hooks per row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed hooks before each row")
    parser.add_argument("--builds", type=int, default=50, help="builds in each hook's pipeline")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="clients posting at once"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="time bound of each row (warm-up too)"
    )
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where the outboxes go (default: $TMPDIR)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not put the clients and servers on separate CPUs"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.hooks < 1 or args.warmup < 0 or args.builds < 1 or args.max_seconds <= 0:
        parser.error("--hooks and --builds must be >= 1, --warmup >= 0, --max-seconds > 0")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency must be >= 1")
    return args


async def run(args: argparse.Namespace, hooks: Sequence[Hook], workdir: Path) -> list[Row]:
    client_cpus, server_cpus = cpu_plan(args.no_pin)
    rows: list[Row] = []
    with pinned(client_cpus):
        for concurrency in args.concurrency:
            _progress(f"{concurrency} client(s)")
            rows.append(await run_noop(args, concurrency, hooks, server_cpus))
            rows.append(await run_direct(args, concurrency, hooks, workdir, server_cpus))
            rows.extend(await run_webhooks(args, concurrency, hooks, workdir, server_cpus))
    return rows


def _loop_run(coro: Coroutine[Any, Any, list[Row]]) -> tuple[list[Row], str]:
    """The coroutine's result on uvloop when importable (as the relay runs), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro), "asyncio"
    return uvloop.run(coro), "uvloop"


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else ["webhooks.py", *argv])])
    _progress(f"making {args.warmup + args.hooks} hooks of {args.builds} builds")
    hooks = make_hooks(args.warmup + args.hooks, args.builds)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ci-relay-bench-webhooks-", dir=args.tmpdir) as tmp:
        rows, loop = _loop_run(run(args, hooks, Path(tmp)))
    client_cpus, server_cpus = cpu_plan(args.no_pin)
    problems = {f"{row.label} ({row.concurrency})": row.problems for row in rows if row.problems}

    hook = hooks[0]
    print("## ci-relay webhook benchmark\n")
    print(f"- command: `{command}` (cwd {Path.cwd()})")
    print(
        f"- machine: nproc={os.cpu_count()}, {_cpu_model()}, Linux {platform.release()}; "
        f"Python {platform.python_version()}; client loop: {loop}; "
        f"aiohttp {importlib.metadata.version('aiohttp')}; SQLite {sqlite3.sqlite_version}; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"- hook: GitLab Pipeline Hook of {args.builds} builds in "
        f"{hook.events - 1 - args.builds} stages, "
        f"{len(hook.body):,} bytes, mapping to {hook.events} events (pipeline, stages, jobs); "
        f"the direct body of those events: {len(hook.direct):,} bytes"
    )
    pin = (
        f"clients on CPU {sorted(client_cpus)}, servers on CPU {sorted(server_cpus)}"
        if client_cpus and server_cpus
        else "not pinned"
    )
    print(
        f"- load: {args.warmup} untimed then {args.hooks} timed hooks per row, each row bounded "
        f"to {args.max_seconds:g} s; keep-alive connections, one per client; {pin}"
    )
    print(
        f"- relay: `ci-relay serve`, outbox synchronous={args.synchronous}, WAL, a fresh file "
        "per path and concurrency (the redeliveries use the webhook row's relay and outbox); "
        f"no API key (nothing sent); code at {_revision()}"
    )
    print()
    print(results_table(rows))
    print()
    print(
        "hooks/s counts the measured loop's answers (one request per hook on every path); "
        "events/s = hooks/s x the events a hook maps to (stored by the direct and webhook rows, "
        "found duplicate by the redeliveries); latency from send to the whole answer, closed "
        "loop; vs direct = hooks/s / the direct row's at the same concurrency; events stored: "
        "new events the measured loop's answers report."
    )
    print()
    for concurrency in args.concurrency:
        direct, webhook = _find(rows, "direct", concurrency), _find(rows, "webhook", concurrency)
        if direct and webhook and direct.hooks_per_s:
            print(
                f"- webhook / direct at {concurrency} client(s): "
                f"{webhook.hooks_per_s / direct.hooks_per_s:.2f} "
                f"({_num(webhook.hooks_per_s)} / {_num(direct.hooks_per_s)} hooks/s)"
            )
    if problems:
        print("\n### CORRECTNESS FAILURES\n")
        for name, found in problems.items():
            for problem in found:
                print(f"- **{name}**: {problem}")
    status = EXIT_BROKEN if problems else EXIT_OK
    print(f"\nresult: {'BROKEN' if problems else 'OK'} (exit status {status})")
    if args.json:
        document = {
            "command": command,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "hook": {
                "bytes": len(hook.body),
                "direct_bytes": len(hook.direct),
                "events": hook.events,
            },
            "rows": [
                asdict(row) | {"hooks_per_s": row.hooks_per_s, "events_per_s": row.events_per_s}
                for row in rows
            ],
            "status": status,
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return status


if __name__ == "__main__":
    # A SIGTERM ends the run through the finally blocks that stop the servers started here.
    signal.signal(signal.SIGTERM, _sigterm)
    raise SystemExit(main())
