"""``ci-relay check-config``: the effective settings, where each comes from, and the checks.

Every setting is shown with its origin, secrets redacted; then the checks ``serve`` makes at
start, so that a setting that would stop the relay is found before it starts: the key files,
the TLS files, the proxy variable that applies to the upstream, the outbox directory. Each
problem is one line on stderr, and the command exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from relay.config import (
    ConfigError,
    Settings,
    load_settings,
    origins,
    unknown_variables,
    writable_directory,
)
from relay.contract.exceptions import EXIT_USAGE
from relay.daemon import OPEN_LISTENER, OPEN_LISTENER_HINT, listener_tls
from relay.delivery.upstream import Proxy, tls_context, upstream_proxy
from relay.keyfiles import KeyFile


def check_config(config: Path | None) -> int:
    """Every setting with its origin, redacted; then the checks, one line per problem."""
    try:
        settings = load_settings(config)
        token, proxy = _read_at_start(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            _problem(problem)
        return EXIT_USAGE
    for line in settings_lines(settings, origins(config)):
        print(line)
    print(f"# batches go to {settings.upstream.intake_url}")
    print(f"# {proxy.shown}")
    directory = settings.outbox.path.parent
    if not writable_directory(directory):
        _problem(f"outbox directory {directory} cannot be created or written")
        return EXIT_USAGE
    print(f"# the outbox directory {directory} is writable")
    if token.value is None and not settings.server.loopback_only:
        print(f"# warning: {OPEN_LISTENER} ({OPEN_LISTENER_HINT})")
    # serve only warns (other programs share the environment); here they are errors, so
    # that a misspelt variable is found before a relay runs without it.
    unknown = unknown_variables()
    for line in unknown:
        _problem(line)
    return EXIT_USAGE if unknown else 0


def settings_lines(settings: Settings, came_from: dict[str, str]) -> list[str]:
    """``[group]`` headings and ``key = value  # origin`` lines, secrets redacted; a key
    missing from ``came_from`` (``relay.config.origins``) has its default."""
    lines = []
    for group, values in settings.redacted().items():
        lines.append(f"[{group}]")
        for key, value in values.items():
            origin = came_from.get(f"{group}.{key}", "default")
            shown = "(unset)" if value is None else orjson.dumps(value).decode()
            lines.append(f"  {f'{key} = {shown}':<56}  # {origin}")
    return lines


def _read_at_start(settings: Settings) -> tuple[KeyFile, Proxy]:
    """What ``serve`` reads before anything opens, checked as it checks them: the key files
    and certificates (never shown), and the proxy variable that applies; the ingest token
    and the proxy. ConfigError naming the setting if one cannot be used."""
    token = KeyFile.ingest_token(settings.server)
    KeyFile.api_key(settings.upstream)
    KeyFile.webhook_secrets(settings.webhooks)
    listener_tls(settings.server)
    tls_context(settings.upstream.ca_file)
    return token, upstream_proxy(settings.upstream)


def _problem(line: str) -> None:
    print(f"ci-relay: {line}", file=sys.stderr)
