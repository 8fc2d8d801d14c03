"""The command-line arguments of ``emit`` and ``run`` (argparse only: cheap to import)."""

from __future__ import annotations

import argparse

from relay.contract.local import DEFAULT_RELAY_URL

LEVELS = ("pipeline", "stage", "job", "step")
STATUSES = ("running", "success", "error", "canceled", "skipped", "blocked")
PROVIDER_NAMES = (
    "github",
    "gitlab",
    "buildkite",
    "circleci",
    "azurepipelines",
    "bitbucket",
    "jenkins",
    "generic",
)


def add_emit_arguments(parser: argparse.ArgumentParser) -> None:
    """``emit LEVEL --status S`` and the flags that shape one event."""
    parser.add_argument("level", choices=LEVELS)
    parser.add_argument("--status", required=True, choices=STATUSES)
    parser.add_argument(
        "--start",
        metavar="TIME",
        help="RFC3339 or epoch seconds; default: the mark of an earlier 'emit --status "
        "running', else the provider's start time where it gives one (now for running)",
    )
    parser.add_argument("--end", metavar="TIME", help="RFC3339 or epoch seconds; default: now")
    parser.add_argument(
        "--error-message", metavar="TEXT", help="what went wrong (with --status error)"
    )
    parser.add_argument("--error-type", metavar="TEXT", help="a short kind of error")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print the request body as JSON on stdout (only a valid one: an invalid event's "
            "problems go to stderr, status 2); post nothing, keep no mark"
        ),
    )
    _event_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``run [--level job|step] [--name N] -- COMMAND ...``."""
    parser.add_argument("--level", choices=("job", "step"), default="job")
    _event_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def _event_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="the event's name; default: the provider's")
    parser.add_argument("--id", help="the stage, job or step id; default: derived (docs)")
    parser.add_argument("--url", help="the event's URL; default: the provider's")
    parser.add_argument("--job-name", help="a step's job name; default: the provider's")
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY:VALUE", help="repeatable"
    )
    parser.add_argument(
        "--metric", action="append", default=[], metavar="KEY:NUMBER", help="repeatable"
    )
    parser.add_argument(
        "--parameter", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    run = parser.add_argument_group("the run (overrides what the provider says)")
    run.add_argument("--provider", choices=PROVIDER_NAMES, help="default: detected")
    run.add_argument("--unique-id", help="the pipeline's unique_id, used as is")
    run.add_argument("--pipeline-id")
    run.add_argument("--pipeline-name")
    run.add_argument("--pipeline-url")
    run.add_argument("--stage", dest="stage_name", metavar="NAME", help="the stage's name")
    run.add_argument("--partial-retry", action="store_true", help="a pipeline's partial retry")
    git = parser.add_argument_group("git (override DD_GIT_*, the provider and the checkout)")
    git.add_argument("--git-repository-url", metavar="URL")
    git.add_argument("--git-sha", metavar="SHA")
    git.add_argument("--git-branch", metavar="BRANCH")
    git.add_argument("--git-tag", metavar="TAG")
    send = parser.add_argument_group("sending")
    send.add_argument(
        "--relay-url",
        metavar="URL",
        help=f"default: $CI_RELAY_URL, else {DEFAULT_RELAY_URL} (the local relay)",
    )
    send.add_argument(
        "--timeout-s",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="for the whole exchange with the relay: connect, send, read the answer",
    )
