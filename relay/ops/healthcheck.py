"""``ci-relay health``: ask the running relay's ``/health`` or ``/ready`` on its configured address.

For container health checks and scripts: it reads the same settings as ``serve`` (file and
environment), so it follows a changed port, and needs nothing but the standard library.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from relay.config import ServerSettings

TIMEOUT_S = 3.0
_BODY_SHOWN_BYTES = 1000


@dataclass(frozen=True)
class ProbeResult:
    """What the probe found: passed or not, and one line saying why."""

    passed: bool
    line: str


def probe_url(server: ServerSettings, path: str) -> str:
    """The URL of ``path`` on the relay that ``server`` configures, reached from its own host."""
    return server.local_url + path


def probe(url: str, timeout_s: float = TIMEOUT_S) -> ProbeResult:
    """GET ``url``: passed on 200; otherwise the status and body, or why nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http only)
            body = response.read(_BODY_SHOWN_BYTES).decode(errors="replace")
            return ProbeResult(True, f"{url}: {response.status} {body}")
    except urllib.error.HTTPError as exc:
        body = exc.read(_BODY_SHOWN_BYTES).decode(errors="replace")
        return ProbeResult(False, f"{url}: {exc.code} {body}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return ProbeResult(False, f"{url}: no answer: {reason}")
