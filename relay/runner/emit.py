"""``ci-relay emit LEVEL``: one event of the current run, checked, then posted to the relay."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import orjson

from relay.runner import event as events
from relay.runner.facts import CIFacts
from relay.runner.markers import StartMark, marker_dir
from relay.runner.options import UsageError, event_options, overrides
from relay.runner.post import NotSent, post, relay_token, relay_url
from relay.runner.resolve import resolve
from relay.runner.streams import warn, write_stdout
from relay.runner.times import now

EXIT_NOT_SENT = 1
EXIT_INVALID = 2


def emit(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    """Build, check and post (or print, with --dry-run) one event; the exit status."""
    try:
        options = event_options(args, args.level, args.status)
        url = relay_url(args.relay_url, env)
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_INVALID)
    facts = resolve(env, overrides(args), Path.cwd())
    for warning in facts.warnings:
        warn(f"ci-relay: emit: {warning}")
    mark = StartMark(marker_dir(env), _identity(options, facts), _marks_not_used)
    running = options.status == "running"
    if running:
        start = options.start or _provider_start(options, facts) or now()
    else:
        start = options.start or mark.read() or _provider_start(options, facts) or ""
        options.end = options.end or now()
    options.start = start or None
    if running and options.level not in events.RUNNING_LEVELS:
        # The intake takes stages and steps only once finished: keep the start for then.
        if not args.dry_run and not mark.write(start):
            return 0  # the warning said why the start is not kept
        warn(
            f"ci-relay: emit: recorded the start of this {options.level} ({options.start}); "
            "the event is sent when it finishes"
        )
        return 0
    body = events.body(options, facts)
    problems = events.problems(body)
    if args.dry_run:
        try:
            write_stdout(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            return _fail(f"cannot write the request body to stdout: {exc.strerror}", EXIT_NOT_SENT)
    if problems:
        for problem in problems:
            warn(f"ci-relay: emit: {problem}")
        return EXIT_INVALID
    if args.dry_run:
        return 0
    try:
        post(url, body, args.timeout_s, relay_token(env))
    except NotSent as exc:
        return _fail(str(exc), EXIT_NOT_SENT)
    if running:
        mark.write(start)
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
