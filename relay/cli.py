"""``ci-relay``: serve, operate on dead letters, check the outbox; all take the same config."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from relay import __version__
from relay.contract.exceptions import UserError
from relay.contract.local import DEFAULT_RELAY_URL

if TYPE_CHECKING:
    from relay.config import OutboxSettings, Settings

# The relay's modules are imported where used: `emit` and `run` start once per job step
# and need none of them (bench/run_overhead.py).
_RUNNER_COMMANDS = ("emit", "run")

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in _RUNNER_COMMANDS:  # no relay settings, no relay modules
        from relay.runner.streams import guarded_streams

        with guarded_streams():  # a broken stderr or stdout never changes their status
            args = _runner_parser().parse_args(argv)
            return int(args.run(args))
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        # Each command loads only the settings it uses: a dead-letter command works even
        # while a daemon setting in the same file is wrong.
        return int(args.run(args, args.load(args.config)))
    except UserError as exc:
        print(f"ci-relay: {exc}", file=sys.stderr)
        return exc.exit_status


def _parser() -> argparse.ArgumentParser:
    from relay.config import load_outbox_settings, load_settings
    from relay.ops.status import exit_statuses_help
    from relay.store.outbox import DEAD_LETTER_REASONS

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
    serve.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, keep and show events (GET /ui), send nothing (upstream.enabled = false)",
    )
    serve.set_defaults(run=_serve, load=load_settings)

    dead = commands.add_parser("dead-letters", help="inspect, replay or purge dead letters")
    dead_commands = dead.add_subparsers(required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", parents=[common], help="show dead letters")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--reason", choices=DEAD_LETTER_REASONS)
    listing.set_defaults(run=_list, load=load_outbox_settings)
    replay = dead_commands.add_parser(
        "replay", parents=[common], help="move dead letters back to the outbox"
    )
    _selection_arguments(replay, "replay")
    replay.set_defaults(
        run=_act, load=load_outbox_settings, verb="replay", past="replayed", into=" into the outbox"
    )
    purge = dead_commands.add_parser("purge", parents=[common], help="delete dead letters")
    purge.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="e.g. 7d, 12h, 30m, 90s"
    )
    _selection_arguments(purge, "purge")
    purge.set_defaults(run=_act, load=load_outbox_settings, verb="purge", past="purged", into="")

    check_config = commands.add_parser(
        "check-config",
        parents=[common],
        help="show the effective settings and where each comes from; check them",
    )
    check_config.set_defaults(run=_check_config, load=lambda config: config)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="ask the running relay what it holds and does; exit non-zero when it needs care",
        description="Ask the running relay (found through the same --config and environment "
        "as serve, or at --url) for GET /status and summarise it.",
        epilog=exit_statuses_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "--url", metavar="URL", help=f"the relay's address, e.g. {DEFAULT_RELAY_URL}"
    )
    status.add_argument("--json", action="store_true", help="print the /status document")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default: 5")
    status.set_defaults(run=_status, load=lambda config: config)

    top = commands.add_parser(
        "top",
        parents=[common],
        help="watch the running relay live: rates, backlog, delivery lag, upstream, dead "
        "letters, recent pipelines (q quits)",
        description="A live view of the running relay (found as status finds it, or at\n"
        "--url), read from GET /status every --interval; q quits (0), Ctrl-C too (130).\n"
        "Without a terminal (--once, or stdout not one) it prints one frame as plain\n"
        "text and exits as status does (docs/top.md).",
        epilog=exit_statuses_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--url", metavar="URL", help=f"the relay's address, e.g. {DEFAULT_RELAY_URL}")
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="between frames; default: 1"
    )
    top.add_argument(
        "--once", action="store_true", help="print one frame as plain text, exit as status does"
    )
    top.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request; default: 5"
    )
    top.set_defaults(run=_top, load=lambda config: config)

    retry = commands.add_parser(
        "retry",
        parents=[common],
        help="once the upstream is fixed, make the running relay try at once (ends a backoff "
        "or an unauthorized or rejecting pause; SIGUSR1 does the same)",
    )
    retry.add_argument(
        "--url", metavar="URL", help=f"the relay's address, e.g. {DEFAULT_RELAY_URL}"
    )
    retry.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default: 5")
    retry.set_defaults(run=_retry, load=lambda config: config)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="ask the running relay's /health (or /ready) on its configured address; exit 0 if ok",
    )
    health.add_argument("--ready", action="store_true", help="ask /ready instead of /health")
    health.set_defaults(run=_health, load=load_settings)

    store = commands.add_parser("outbox", help="check the outbox file, or move a damaged one aside")
    store_commands = store.add_subparsers(required=True, metavar="ACTION")
    check = store_commands.add_parser(
        "check", parents=[common], help="SQLite's integrity check, read-only, and the counts"
    )
    check.set_defaults(run=_check, load=load_outbox_settings)
    aside = store_commands.add_parser(
        "move-aside",
        parents=[common],
        help="rename the outbox (with its -wal) for salvage, so that serve starts a new one",
    )
    aside.set_defaults(run=_move_aside, load=load_outbox_settings)
    salvage = store_commands.add_parser(
        "import",
        parents=[common],
        help="append the pending events of a moved-aside outbox to the outbox, as far as "
        "that file can be read (it is only read); a second run does nothing",
    )
    salvage.add_argument(
        "file", type=Path, metavar="FILE", help="the moved-aside file (outbox.db.damaged-...)"
    )
    salvage.set_defaults(run=_import, load=load_outbox_settings)
    _runner_commands(commands)
    return parser


def _runner_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ci-relay")
    _runner_commands(parser.add_subparsers(required=True, metavar="COMMAND"))
    return parser


def _runner_commands(commands: Any) -> None:
    from relay.runner.arguments import add_emit_arguments, add_run_arguments

    emit = commands.add_parser(
        "emit", help="send one pipeline, stage, job or step event of the current CI run"
    )
    add_emit_arguments(emit)
    emit.set_defaults(run=_emit)
    wrap = commands.add_parser(
        "run", help="run a command, then report it as a job or step (its exit status kept)"
    )
    add_run_arguments(wrap)
    wrap.set_defaults(run=_wrap)


def _selection_arguments(command: argparse.ArgumentParser, verb: str) -> None:
    from relay.store.outbox import DEAD_LETTER_REASONS

    command.add_argument("--reason", choices=DEAD_LETTER_REASONS)
    command.add_argument(
        "--id",
        type=int,
        nargs="+",
        action="extend",
        dest="ids",
        metavar="N",
        help="dead-letter ids, as list and the relay's log give them",
    )
    command.add_argument("--all", action="store_true", help=f"{verb} every dead letter")
    command.add_argument(
        "--dry-run", action="store_true", help=f"say how many would {verb}, change nothing"
    )


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 7d, 12h, 30m, 90s")
    return float(match[1]) * _UNIT_S[match[2]]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay import log
    from relay.daemon import serve

    log.configure(settings.log.format, settings.log.level)
    if args.dry_run:
        upstream = settings.upstream.model_copy(update={"enabled": False})
        settings = settings.model_copy(update={"upstream": upstream})
    return _run(serve(settings, args.config))


def _list(args: argparse.Namespace, outbox: OutboxSettings) -> int:
    from relay.store.deadletters import list_dead_letters

    letters = _run(list_dead_letters(outbox.path, args.reason))
    for letter in letters:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(letter.as_dict()) + b"\n")
        else:
            print(letter.line())
    if not args.json:
        print(f"{len(letters)} dead letter(s) in {outbox.path}", file=sys.stderr)
    return 0


def _act(args: argparse.Namespace, outbox: OutboxSettings) -> int:
    """Replay or purge: the selected dead letters, every one only with --all."""
    from relay.store import deadletters

    older_than = getattr(args, "older_than", None)
    given = deadletters.Selection(args.reason, args.ids, older_than)
    selection = deadletters.chosen(args.verb, given, every=args.all)
    if args.dry_run:
        count = _run(deadletters.count(outbox.path, selection))
        print(f"would {args.verb} {count} dead letter(s){args.into}; nothing changed (dry run)")
        return 0
    progress = _Progress(args.past) if sys.stderr.isatty() else None
    done = _run(deadletters.act(args.verb, outbox.path, selection, progress))
    if progress is not None:
        progress.end()
    print(f"{args.past} {done.count} dead letter(s){args.into}")
    if done.missing:
        shown = " ".join(map(str, done.missing))
        print(f"ci-relay: no dead letter with id {shown}", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """``replayed 12000 of 1300000`` rewritten in place on a terminal."""

    def __init__(self, past: str) -> None:
        self._past = past
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        print(f"\r{self._past} {done} of {total}", end="", file=sys.stderr, flush=True)
        self._shown = True

    def end(self) -> None:
        if self._shown:
            print(file=sys.stderr)


def _emit(args: argparse.Namespace) -> int:
    from relay.runner.emit import emit

    return emit(args)


def _wrap(args: argparse.Namespace) -> int:
    from relay.runner.wrap import run

    return run(args)


def _check(args: argparse.Namespace, outbox: OutboxSettings) -> int:
    from relay.store.outbox_file import check

    path = outbox.path
    report = check(path)
    if report.problems:
        print(f"outbox {path} is damaged:")
        for problem in report.problems:
            print(f"  {problem}")
        print("keep it for salvage with 'ci-relay outbox move-aside', then start again")
        return 1
    print(
        f"outbox {path} is sound: {report.events} pending event(s), "
        f"{report.dead_letters} dead letter(s)"
    )
    return 0


def _move_aside(args: argparse.Namespace, outbox: OutboxSettings) -> int:
    from relay.store.outbox_file import ServeLock, move_aside

    path = outbox.path
    lock = ServeLock(path)
    lock.acquire()  # refuses while a relay serves this outbox
    try:
        target = move_aside(path)
    finally:
        lock.release()
    print(f"moved outbox {path} to {target}; the next start creates a new outbox")
    print(f"deliver its events with: ci-relay outbox import {target}")
    return 0


def _import(args: argparse.Namespace, outbox: OutboxSettings) -> int:
    """Exit 0 when every pending event of the file is in the outbox, 1 when some were lost
    or how many is unknown."""
    from relay.store.salvage import import_outbox

    report = _run(import_outbox(args.file, outbox))
    for line in report.lines():
        print(line)
    return 0 if report.finished_before or report.lost == 0 else 1


def _health(args: argparse.Namespace, settings: Settings) -> int:
    from relay.ops.healthcheck import probe, probe_url

    if settings.server.port == 0:
        raise UserError("server.port is 0 (chosen at start): no address to ask")
    result = probe(probe_url(settings.server, "/ready" if args.ready else "/health"))
    print(result.line, file=sys.stdout if result.passed else sys.stderr)
    return 0 if result.passed else 1


def _check_config(args: argparse.Namespace, config: Path | None) -> int:
    from relay.check import check_config

    return check_config(config)


def _status(args: argparse.Namespace, config: Path | None) -> int:
    from relay.ops.status_client import status

    return status(config, args.url, args.json, args.timeout)


def _top(args: argparse.Namespace, config: Path | None) -> int:
    from relay.ops.top import top

    return top(config, args.url, args.interval, args.once, args.timeout)


def _retry(args: argparse.Namespace, config: Path | None) -> int:
    from relay.ops.retry import retry

    return retry(config, args.url, args.timeout)
