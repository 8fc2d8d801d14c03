"""From parsed command-line arguments to the runner's option objects."""

from __future__ import annotations

import argparse

from relay.contract.exceptions import UserError
from relay.runner.event import EventOptions, Level
from relay.runner.resolve import Overrides
from relay.runner.times import time_flag


def overrides(args: argparse.Namespace) -> Overrides:
    """The run facts the flags give."""
    return Overrides(
        provider=args.provider,
        unique_id=args.unique_id,
        pipeline_id=args.pipeline_id,
        pipeline_name=args.pipeline_name,
        pipeline_url=args.pipeline_url,
        stage_name=args.stage_name,
        git_repository_url=args.git_repository_url,
        git_sha=args.git_sha,
        git_branch=args.git_branch,
        git_tag=args.git_tag,
    )


def event_options(args: argparse.Namespace, level: Level, status: str) -> EventOptions:
    """The event-shaping flags, checked for form (UserError naming the flag); the schema
    checks the rest."""
    start = getattr(args, "start", None)
    end = getattr(args, "end", None)
    return EventOptions(
        level=level,
        status=status,
        start=time_flag(start) if start else None,
        end=time_flag(end) if end else None,
        name=args.name,
        id=args.id,
        url=args.url,
        job_name=args.job_name,
        partial_retry=args.partial_retry,
        tags=list(args.tag),
        metrics=list(args.metric),
        parameters=_parameters(args.parameter),
        error_message=getattr(args, "error_message", None),
        error_type=getattr(args, "error_type", None),
    )


def _parameters(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--parameter {pair!r} is not KEY=VALUE")
        parameters[key] = value
    return parameters
