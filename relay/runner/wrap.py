"""``ci-relay run -- COMMAND``: run a command untouched, then report it as a job or step.

The command inherits stdin, stdout and stderr and gets the signals the wrapper gets. The
wrapper writes only to stderr, and reporting never changes the exit status: the command's
own, or 128+N when a signal N ended it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from relay.contract.exceptions import EXIT_USAGE, RelayError
from relay.runner import event as events
from relay.runner.facts import CIFacts
from relay.runner.options import event_options, overrides
from relay.runner.post import post, relay_token, relay_url
from relay.runner.resolve import resolve
from relay.runner.streams import warn
from relay.runner.text import TextEnv, not_utf8, repair_arguments, repaired, warn_not_utf8
from relay.runner.times import rfc3339

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# Signals a terminal sends to its whole foreground process group, the command included.
_FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)
_MAX_NAME = 200


@dataclass(frozen=True)
class Outcome:
    """How the command ended: the wrapper's exit status and, for a failure, why."""

    exit_status: int
    error_type: str | None = None
    error_message: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error_type else "success"


class _Interrupted(RelayError):
    """A signal arrived while reporting: the job is being stopped, so stop reporting."""


@dataclass
class _Prepared:
    """What the report needs from the environment, read while the command runs (after it,
    if it never started), or what stopped reading it."""

    done: bool = False
    url: str = ""
    token: str | None = None
    facts: CIFacts | None = None
    error: Exception | None = None


def run(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    """Run the command, report it, and return the command's exit status."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        warn("ci-relay: run: give the command after --")
        return EXIT_USAGE
    text = TextEnv(env)  # the command itself gets the environment's bytes untouched
    flags = repair_arguments(args, keep=("command",))
    prepared = _Prepared()
    start_s = time.time()
    outcome = _execute(command, lambda: _prepare(args, text, prepared))
    end_s = time.time()
    for signum in FORWARDED:
        signal.signal(signum, _stop_reporting)
    with contextlib.suppress(_Interrupted):
        if not prepared.done:  # the command never started
            _prepare(args, text, prepared)
        warn_not_utf8("run", flags, text)
        _report(args, command, outcome, (start_s, end_s), prepared)
    return outcome.exit_status


def _execute(command: list[str], meanwhile: Callable[[], None]) -> Outcome:
    """Start ``command``, call ``meanwhile`` while it runs, and wait for its end."""
    child: list[int] = []
    received: list[int] = []
    forward_terminal_keys = not _in_terminal_foreground()

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum in _FROM_TERMINAL and not forward_terminal_keys:
            return  # the terminal sent it to the command as well
        if not child:
            received.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(child[0], signum)

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an inherited SIG_IGN would reap it for us
    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        # Python ignores SIGPIPE and SIGXFSZ for itself; the command gets the defaults back.
        pid = os.posix_spawnp(
            command[0], command, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
        )
    except FileNotFoundError:
        warn(f"ci-relay: run: {command[0]}: command not found")
        return Outcome(EXIT_NOT_FOUND, "command_not_found", f"{command[0]}: command not found")
    except OSError as exc:
        warn(f"ci-relay: run: {command[0]}: {exc.strerror}")
        return Outcome(
            EXIT_NOT_EXECUTABLE, "command_not_executable", f"{command[0]}: {exc.strerror}"
        )
    child.append(pid)
    for early in received:  # arrived before the command existed
        os.kill(pid, early)
    meanwhile()
    _, wait_status = os.waitpid(pid, 0)  # signal handlers run during the wait (PEP 475)
    return _outcome(os.waitstatus_to_exitcode(wait_status))


def _outcome(code: int) -> Outcome:
    if code == 0:
        return Outcome(0)
    if code > 0:
        return Outcome(code, "exit_status", f"the command exited with status {code}")
    signum = -code
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown"
    return Outcome(128 + signum, "signal", f"the command was killed by signal {signum} ({name})")


def _in_terminal_foreground() -> bool:
    """Whether a terminal's keys (Ctrl-C) reach this process group directly."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


def _stop_reporting(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def _prepare(args: argparse.Namespace, env: Mapping[str, str], prepared: _Prepared) -> None:
    """Read the relay's address, the token and the run's facts, and load the schema: while
    the command runs, off the exit path."""
    prepared.done = True
    try:
        prepared.url = relay_url(args.relay_url, env)
        prepared.token = relay_token(env)
        prepared.facts = resolve(env, overrides(args), Path.cwd())
        import relay.contract.schema  # noqa: F401 - loaded now rather than after the command
    except _Interrupted:
        raise
    except Exception as exc:  # reporting never breaks the command
        prepared.error = exc


def _report(
    args: argparse.Namespace,
    command: list[str],
    outcome: Outcome,
    times: tuple[float, float],
    prepared: _Prepared,
) -> None:
    """Post the event; on any failure, one warning line on stderr."""
    level = args.level
    facts = prepared.facts
    if prepared.error is not None or facts is None:
        _warn(level, _reason(prepared.error))
        return
    for warning in facts.warnings:
        warn(f"ci-relay: run: {warning}")
    try:
        options = event_options(args, level, outcome.status)
        options.start, options.end = rfc3339(times[0]), rfc3339(times[1])
        options.error_type, options.error_message = outcome.error_type, outcome.error_message
        if not options.name and (level == "step" or not facts.job_name):
            options.name = _command_name(command)
        body = events.body(options, facts)
        problems = events.problems(body)
        if not problems:
            post(prepared.url, body, args.timeout_s, prepared.token)
    except _Interrupted:
        raise
    except Exception as exc:  # NotSent, and anything else: reporting never breaks the command
        _warn(level, _reason(exc))
        return
    if problems:
        _warn(level, "the event is not valid: " + "; ".join(problems))


def _command_name(command: list[str]) -> str:
    """The command line as the event's name; its bytes that are not UTF-8 replaced."""
    line = shlex.join(command)
    name = repaired(line)
    if name != line:
        warn(f"ci-relay: run: {not_utf8('the command line')}")
    return name[:_MAX_NAME]


def _reason(exc: Exception | None) -> str:
    return (str(exc) or type(exc).__name__) if exc is not None else "nothing was read"


def _warn(level: str, reason: str) -> None:
    warn(f"ci-relay: run: the {level} was not reported: {reason}")
