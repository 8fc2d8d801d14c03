"""``ci-relay emit LEVEL``: one event of the current run, checked, then posted to the relay."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from relay.contract.exceptions import UserError
from relay.runner import event as events
from relay.runner.facts import CIFacts
from relay.runner.markers import StartMark, marker_dir
from relay.runner.options import event_options, overrides
from relay.runner.post import NotSent, post, relay_token, relay_url
from relay.runner.resolve import resolve
from relay.runner.streams import warn, write_stdout
from relay.runner.text import TextEnv, repair_arguments, warn_not_utf8
from relay.runner.times import now

EXIT_NOT_SENT = 1
EXIT_INVALID = 2


def emit(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    """Build, check and post (or print, with --dry-run) one event; the exit status."""
    text = TextEnv(env)
    flags = repair_arguments(args)
    try:
        options = event_options(args, args.level, args.status)
        relay = _Relay(relay_url(args.relay_url, text), relay_token(text), args.timeout_s)
    except (UserError, ValueError) as exc:
        warn_not_utf8("emit", flags, text)
        return _fail(str(exc), EXIT_INVALID)
    facts = resolve(text, overrides(args), Path.cwd())
    warn_not_utf8("emit", flags, text)
    for warning in facts.warnings:
        warn(f"ci-relay: emit: {warning}")
    # A path is bytes: the raw environment's, not its text.
    mark = StartMark(marker_dir(env), _identity(options, facts), _marks_not_used)
    if options.status == "running":
        options.start = options.start or _provider_start(options, facts) or now()
    else:
        options.start = options.start or mark.read() or _provider_start(options, facts)
        options.end = options.end or now()
    if options.status == "running" and options.level not in events.RUNNING_LEVELS:
        # The intake takes stages and steps only once finished: keep the start for then.
        return _record_start(options, mark, args.dry_run)
    return _send(options, facts, mark, relay, args.dry_run)


@dataclass(frozen=True)
class _Relay:
    """Where and how to post."""

    url: str
    token: str | None
    timeout_s: float


def _record_start(options: events.EventOptions, mark: StartMark, dry_run: bool) -> int:
    start = options.start or now()
    if not dry_run and not mark.write(start):
        return 0  # the warning said why the start is not kept
    warn(
        f"ci-relay: emit: recorded the start of this {options.level} ({start}); "
        "the event is sent when it finishes"
    )
    return 0


def _send(
    options: events.EventOptions, facts: CIFacts, mark: StartMark, relay: _Relay, dry_run: bool
) -> int:
    """Check the event, then print it (dry run) or post it and keep or forget its mark.

    An invalid event is its problems on stderr and status 2, dry run or not: stdout only
    ever holds a body the relay accepts, so a script piping it on never sends one it refuses.
    """
    body = events.body(options, facts)
    problems = events.problems(body)
    if problems:
        for problem in problems:
            warn(f"ci-relay: emit: {problem}")
        if dry_run:
            warn("ci-relay: emit: no request body printed: the event is not valid")
        return EXIT_INVALID
    if dry_run:
        try:
            write_stdout(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            return _fail(f"cannot write the request body to stdout: {exc.strerror}", EXIT_NOT_SENT)
        return 0
    try:
        post(relay.url, body, relay.timeout_s, relay.token)
    except NotSent as exc:
        return _fail(str(exc), EXIT_NOT_SENT)
    if options.status == "running":
        mark.write(options.start or "")
    else:
        mark.remove()
    return 0


def _identity(options: events.EventOptions, facts: CIFacts) -> tuple[str, ...]:
    """What names one event across commands, whatever its start."""
    level = options.level
    name = events.event_name(options, facts) or ""
    job = (facts.job_id or "") if level in ("job", "step") else ""
    return (
        level,
        facts.unique_id or "",
        options.id or "",
        job,
        "" if level == "pipeline" else name,
    )


def _provider_start(options: events.EventOptions, facts: CIFacts) -> str | None:
    return {"pipeline": facts.pipeline_start, "job": facts.job_start}.get(options.level)


def _marks_not_used(reason: str) -> None:
    warn(f"ci-relay: emit: start marks are not used: {reason}")


def _fail(message: str, status: int) -> int:
    warn(f"ci-relay: emit: {message}")
    return status
