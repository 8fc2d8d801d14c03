"""``ci-relay``: serve, and operate on dead letters. Every command takes the same config."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from relay import __version__, log
from relay.config import ConfigError, Settings, load_settings
from relay.migrate import SchemaTooNew
from relay.outbox import DEAD_LETTER_REASONS

T = TypeVar("T")

EXIT_USAGE = 2

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"ci-relay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args, settings))
    except SchemaTooNew as exc:
        print(f"ci-relay: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (see config.example.toml)"
    )
    parser = argparse.ArgumentParser(
        prog="ci-relay", description="Local buffering relay for Datadog CI pipeline events."
    )
    parser.add_argument("--version", action="version", version=f"ci-relay {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the relay")
    serve.set_defaults(run=_serve)

    dead = commands.add_parser("dead-letters", help="inspect, replay or purge dead letters")
    dead_commands = dead.add_subparsers(required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", parents=[common], help="show dead letters")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--reason", choices=DEAD_LETTER_REASONS)
    listing.set_defaults(run=_list)
    replay = dead_commands.add_parser(
        "replay", parents=[common], help="move dead letters back to the outbox"
    )
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--reason", choices=DEAD_LETTER_REASONS)
    which.add_argument("--id", type=int, action="append", dest="ids", metavar="N")
    replay.set_defaults(run=_replay)
    purge = dead_commands.add_parser("purge", parents=[common], help="delete dead letters")
    purge.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="e.g. 7d, 12h, 30m, 90s"
    )
    purge.set_defaults(run=_purge)
    return parser


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 7d, 12h, 30m, 90s")
    return float(match[1]) * _UNIT_S[match[2]]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay.daemon import serve

    log.configure(settings.log.format, settings.log.level)
    return _run(serve(settings))


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.deadletters import list_dead_letters

    letters = _run(list_dead_letters(settings.outbox.path, args.reason))
    for letter in letters:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(letter.as_dict()) + b"\n")
        else:
            row = letter.as_dict()
            print(
                f"{row['id']:>6}  {row['reason']:<9}  {row['upstream_status'] or '-':>3}  "
                f"{row['last_failure_at']}  attempts={row['attempts']}  {row['detail']}"
            )
    if not args.json:
        print(f"{len(letters)} dead letter(s) in {settings.outbox.path}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from relay.deadletters import replay

    moved = _run(replay(settings.outbox.path, args.reason, args.ids))
    print(f"replayed {moved} dead letter(s) into the outbox")
    return 0


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    from relay.deadletters import purge

    removed = _run(purge(settings.outbox.path, args.older_than))
    print(f"purged {removed} dead letter(s)")
    return 0
