"""Where a relay on this machine listens by default: ``ci-relay serve``'s address when
nothing is configured, and where ``ci-relay run`` and ``emit`` post when not told; the
environment variables those runner commands read (the daemon's settings know them, so as
not to take them for misspelt settings)."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780
DEFAULT_RELAY_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

RELAY_URL_VARIABLE = "CI_RELAY_URL"
RELAY_TOKEN_VARIABLE = "CI_RELAY_TOKEN"  # noqa: S105 - the name of a variable
MARKER_DIR_VARIABLE = "CI_RELAY_MARKER_DIR"
RUNNER_VARIABLES = (RELAY_URL_VARIABLE, RELAY_TOKEN_VARIABLE, MARKER_DIR_VARIABLE)
