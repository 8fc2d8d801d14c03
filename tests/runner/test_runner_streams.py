"""A broken stderr (closed, full, a pipe nobody reads) changes neither the exit status nor
stdout of ``ci-relay run``, and ``emit`` keeps its documented statuses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from relay.testing.samples import ago
from tests.runner.runner_cli import clean_env, unused_url
from tests.runner.test_emit import github

BROKEN = ["closed", "full", "epipe"]
TIMEOUT_S = 60.0


def ci_relay(
    args: list[str], env: dict[str, str], cwd: Path, stderr: str, stdout: str = "pipe"
) -> subprocess.CompletedProcess[bytes]:
    """``python -m relay ARGS`` with stderr ``closed`` (``2>&-`` by a shell), on ``full``
    (/dev/full) or ``epipe`` (a pipe whose read end is closed); stdout captured, or ``full``."""
    command = [sys.executable, "-m", "relay", *args]
    with contextlib.ExitStack() as stack:
        out: int | IO[bytes] = subprocess.PIPE
        if stdout == "full":
            out = stack.enter_context(open("/dev/full", "wb"))
        err: int | IO[bytes] | None = None
        if stderr == "closed":
            command = ["sh", "-c", 'exec "$@" 2>&-', "sh", *command]
        elif stderr == "full":
            err = stack.enter_context(open("/dev/full", "wb"))
        else:
            read_end, err = os.pipe()
            os.close(read_end)
            stack.callback(os.close, err)
        return subprocess.run(
            command, env=env, cwd=cwd, stdout=out, stderr=err, timeout=TIMEOUT_S, check=False
        )


@pytest.mark.parametrize("stderr", BROKEN)
def test_run_keeps_status_and_stdout_when_the_warning_cannot_be_written(
    checkout: tuple[Path, str], tmp_path: Path, stderr: str
) -> None:
    """With the relay down and stderr broken, run exits with the command's status and stdout
    holds the command's bytes alone."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    done = ci_relay(["run", "--", "sh", "-c", "printf abc; exit 3"], env, cwd, stderr)
    assert (3, b"abc") == (done.returncode, done.stdout)
    success = ci_relay(["run", "--", "true"], env, cwd, stderr)
    assert (0, b"") == (success.returncode, success.stdout)


def test_run_leaves_a_closed_stderr_closed_for_the_command(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """The command of a run started with stderr closed finds fd 2 closed, as it was given."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    probe = "import os; print('open' if os.path.exists('/proc/self/fd/2') else 'closed')"
    done = ci_relay(["run", "--", sys.executable, "-c", probe], env, cwd, "closed")
    assert (0, b"closed\n") == (done.returncode, done.stdout)


@pytest.mark.parametrize("stderr", BROKEN)
def test_run_of_a_missing_command_is_127_whatever_stderr_is(
    checkout: tuple[Path, str], tmp_path: Path, stderr: str
) -> None:
    """A command that is not found still exits 127 when its one line cannot be written."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    done = ci_relay(["run", "--", "no-such-command-xyz"], env, cwd, stderr)
    assert (127, b"") == (done.returncode, done.stdout)


def test_run_status_survives_a_full_stdout_and_stderr(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """With both stdout and stderr on a full device, run's status is still the command's."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    done = ci_relay(["run", "--", "sh", "-c", "exit 5"], env, cwd, "full", stdout="full")
    assert 5 == done.returncode


@pytest.mark.parametrize("stderr", BROKEN)
def test_emit_keeps_its_statuses_when_stderr_is_broken(
    checkout: tuple[Path, str], tmp_path: Path, stderr: str
) -> None:
    """emit exits 0 for a recorded start, 1 for an unreachable relay and 2 for an invalid
    event when its lines cannot be written, and never writes them to stdout."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=unused_url())
    start = ["--start", ago(seconds=5)]
    running = ["emit", "step", "--status", "running", "--name", "lint", *start]
    recorded = ci_relay(running, env, cwd, stderr)
    unsent = ci_relay(["emit", "job", "--status", "success", *start], env, cwd, stderr)
    invalid = ci_relay(
        ["emit", "job", "--status", "success"], clean_env(tmp_path), tmp_path, stderr
    )
    assert [(0, b""), (1, b""), (2, b"")] == [
        (done.returncode, done.stdout) for done in (recorded, unsent, invalid)
    ]
    assert 1 == len(list((tmp_path / "marks").iterdir()))


def test_emit_dry_run_to_a_full_stdout_is_status_1(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A dry run whose body cannot be written to stdout says so in one line and exits 1."""
    cwd, sha = checkout
    env = github(tmp_path, sha)
    args = ["emit", "job", "--status", "success", "--start", ago(seconds=5), "--dry-run"]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            env=env,
            cwd=cwd,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT_S,
            check=False,
        )
    assert (
        1,
        ["ci-relay: emit: cannot write the request body to stdout: No space left on device"],
    ) == (
        done.returncode,
        done.stderr.decode().splitlines(),
    )


def test_emit_dry_run_of_an_invalid_event_leaves_stdout_alone(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """An invalid event's dry run writes nothing to stdout: a full one changes nothing, the
    problems are reported and the status is 2 (invalid), not 1."""
    cwd, sha = checkout
    env = github(tmp_path, sha)
    args = ["emit", "job", "--status", "success", "--dry-run"]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            env=env,
            cwd=cwd,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT_S,
            check=False,
        )
    assert (
        2,
        [
            "ci-relay: emit: data.attributes.resource.start: Field required "
            "(give --start, or an earlier 'emit --status running')",
            "ci-relay: emit: no request body printed: the event is not valid",
        ],
    ) == (done.returncode, done.stderr.decode().splitlines())
