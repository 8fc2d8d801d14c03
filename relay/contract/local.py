"""Where a relay on this machine listens by default: ``ci-relay serve``'s address when
nothing is configured, and where ``ci-relay run`` and ``emit`` post when not told."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780
DEFAULT_RELAY_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
