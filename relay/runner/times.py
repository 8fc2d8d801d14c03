"""Times as the intake takes them: RFC3339, UTC, milliseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` as ``2024-11-25T20:08:11.018Z``."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> str:
    """The current time, RFC3339."""
    return rfc3339(time.time())


def time_flag(text: str) -> str:
    """A --start or --end value: RFC3339 as given (the schema checks it), or epoch seconds."""
    stripped = text.strip()
    try:
        return rfc3339(float(stripped))
    except (ValueError, OverflowError, OSError):
        return stripped
