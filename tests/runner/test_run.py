"""``ci-relay run``: the command runs untouched, its status is kept, its end is reported."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.errors import error_response
from relay.testing.samples import ago
from tests.helpers import RunningRelay
from tests.helpers import relay_command as ci_relay
from tests.runner.runner_cli import clean_env, unused_url
from tests.runner.test_emit import github, stored


async def test_output_input_and_success_pass_through(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """stdin, stdout and stderr are the command's alone; status 0 is reported as success."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay(
        "run", "--", "sh", "-c", "cat; echo out; echo err >&2", env=env, cwd=cwd, stdin=b"in\n"
    )
    assert (0, b"in\nout\n", b"err\n") == (done.returncode, done.stdout, done.stderr)
    [job] = await stored(relay)
    assert ("job", "test", "success", "test") == (
        job["level"],
        job["name"],
        job["status"],
        job["id"],
    )
    assert "error" not in job
    assert job["start"] <= job["end"]


@pytest.mark.parametrize(
    ("script", "status", "error"),
    [
        ("exit 1", 1, {"type": "exit_status", "message": "the command exited with status 1"}),
        ("exit 127", 127, {"type": "exit_status", "message": "the command exited with status 127"}),
        (
            "kill -KILL $$",
            128 + 9,
            {"type": "signal", "message": "the command was killed by signal 9 (SIGKILL)"},
        ),
    ],
)
async def test_failure_keeps_the_status_and_reports_an_error(
    relay: RunningRelay,
    checkout: tuple[Path, str],
    tmp_path: Path,
    script: str,
    status: int,
    error: dict[str, str],
) -> None:
    """A failing command's status is the wrapper's (128+N for a signal), reported as error."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay("run", "--", "sh", "-c", script, env=env, cwd=cwd)
    assert (status, b"", b"") == (done.returncode, done.stdout, done.stderr)
    [job] = await stored(relay)
    assert ("error", error) == (job["status"], job["error"])


async def test_missing_command_is_127_and_reported(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A command that is not found exits 127 with one line, as a shell would, and is reported."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay("run", "--", "no-such-command-xyz", "arg", env=env, cwd=cwd)
    assert (127, b"", b"ci-relay: run: no-such-command-xyz: command not found\n") == (
        done.returncode,
        done.stdout,
        done.stderr,
    )
    [job] = await stored(relay)
    assert {"type": "command_not_found", "message": "no-such-command-xyz: command not found"} == (
        job["error"]
    )


async def test_step_level_names_the_command_and_its_job(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """--level step reports a step named after the command, inside the provider's job."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay("run", "--level", "step", "--", "true", env=env, cwd=cwd)
    assert 0 == done.returncode
    [step] = await stored(relay)
    assert ("step", "true", "test", "test", "success") == (
        step["level"],
        step["name"],
        step["job_id"],
        step["job_name"],
        step["status"],
    )


async def test_unreachable_relay_keeps_the_exit_status(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """With no relay listening, run warns once on stderr and exits with the command's status."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    done = await ci_relay("run", "--", "sh", "-c", "echo built; exit 3", env=env, cwd=cwd)
    [warning] = done.stderr.decode().splitlines()
    assert (3, b"built\n") == (done.returncode, done.stdout)
    assert warning.startswith("ci-relay: run: the job was not reported: cannot reach the relay")


async def test_refusing_relay_keeps_the_exit_status(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A relay answering 503 gets one warning naming its answer; the status stays the command's."""

    async def busy(request: web.Request) -> web.Response:
        return error_response(503, "the outbox is full", headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_post("/api/v2/ci/pipeline", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        cwd, sha = checkout
        env = github(tmp_path, sha, CI_RELAY_URL=f"http://{host}:{port}")
        done = await ci_relay("run", "--", "true", env=env, cwd=cwd)
    finally:
        await runner.cleanup()
    assert (0, b"") == (done.returncode, done.stdout)
    assert (
        "ci-relay: run: the job was not reported: the relay at "
        f"http://{host}:{port}/api/v2/ci/pipeline answered 503: the outbox is full\n"
    ) == done.stderr.decode()


async def test_invalid_event_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    """Outside any CI system and checkout the job cannot be described: one warning, status kept."""
    env = clean_env(tmp_path, CI_RELAY_URL=unused_url())
    done = await ci_relay("run", "--", "sh", "-c", "exit 4", env=env, cwd=tmp_path)
    [warning] = done.stderr.decode().splitlines()
    assert 4 == done.returncode
    assert warning.startswith("ci-relay: run: the job was not reported: the event is not valid: ")
    assert "data.attributes.resource.pipeline_unique_id: Field required" in warning


async def test_sigterm_is_forwarded_to_the_command(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """SIGTERM to the wrapper reaches the command, whose own exit status is then the wrapper's."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    child = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b'term\\n'), os._exit(42)))\n"
        "os.write(1, b'ready\\n')\n"
        "time.sleep(60)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "run", "--", sys.executable, "-c", child,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert b"ready\n" == await asyncio.wait_for(proc.stdout.readline(), 30)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert (42, b"term\n", b"") == (proc.returncode, stdout, stderr)
    [job] = await stored(relay)
    expected: dict[str, Any] = {
        "type": "exit_status",
        "message": "the command exited with status 42",
    }
    assert ("error", expected) == (job["status"], job["error"])


async def test_nothing_but_the_command_writes_to_stdout(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A command's binary output reaches stdout byte for byte, with nothing added."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    payload = bytes(range(256)) * 64
    script = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    done = await ci_relay(
        "run", "--", sys.executable, "-c", script, env=env, cwd=cwd, stdin=payload
    )
    assert (0, payload, b"") == (done.returncode, done.stdout, done.stderr)
    assert 1 == len(await stored(relay))


def test_the_wrapper_starts_without_the_relay_modules() -> None:
    """What run loads before starting the command holds none of the relay's heavy libraries."""
    probe = (
        "import sys, relay.cli, relay.runner.wrap\n"
        "heavy = ('pydantic', 'pydantic_settings', 'structlog', 'aiosqlite', 'aiohttp',"
        " 'relay.config', 'relay.store.outbox', 'relay.contract.schema')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    assert ("[]\n", "") == (done.stdout, done.stderr)


@pytest.mark.parametrize(
    "url",
    [
        "http://operator:SeCrEt1@127.0.0.1:9",
        "http://operator:SeCrEt1/SeCrEt2@127.0.0.1:9",
        "ftp://operator:SeCrEt1@127.0.0.1:9",
        "http://127.0.0.1:SeCrEt1",
        "http://operator:9/SeCrEt1@127.0.0.1:9",
    ],
    ids=["login", "slash-in-secret", "ftp", "text-port", "numeric-secret-with-slash"],
)
@pytest.mark.parametrize("command", ["run", "emit"])
async def test_a_relay_url_never_has_its_login_quoted(
    checkout: tuple[Path, str], tmp_path: Path, url: str, command: str
) -> None:
    """A CI_RELAY_URL holding a login (the relay takes its token in CI_RELAY_TOKEN) or a
    broken port is refused in one line that quotes no part of it; run keeps its status."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=url)
    args = ["--", "sh", "-c", "exit 4"]
    if command == "emit":
        args = ["job", "--status", "success", "--start", ago(seconds=9)]
    done = await ci_relay(command, *args, env=env, cwd=cwd)
    lines = done.stderr.decode().splitlines()
    assert (4 if command == "run" else 2, 1) == (done.returncode, len(lines)), lines
    assert [] == [part for part in ("operator", "SeCrEt1", "SeCrEt2") if part in lines[0]]
    assert "CI_RELAY_URL" in lines[0]
