"""Datadog's CI Visibility pipeline intake: the facts of its contract, in one place.

The path and its request envelope, the per-request event limit, the 18-hour window, the
sites, and the error body in both directions (the relay answers in it and reads the
upstream's). Everything else in the relay takes these from here, so the store, the
flusher and the upstream client know nothing of the wire format but through this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Literal, get_args

# orjson and http are imported inside the error-body functions: `ci-relay run` reads the
# path from here once per job step, and must start quickly.

PIPELINE_PATH = "/api/v2/ci/pipeline"

# The intake takes at most this many events in one request.
MAX_EVENTS_PER_REQUEST = 1000

# The longest error message and error type an event may carry.
MAX_ERROR_MESSAGE = 5000
MAX_ERROR_TYPE = 100

# The intake refuses an event whose end is older than this.
WINDOW = timedelta(hours=18)
WINDOW_S = WINDOW.total_seconds()
# The window as messages name it: "18 hours".
WINDOW_HOURS = WINDOW // timedelta(hours=1)
WINDOW_TEXT = f"{WINDOW_HOURS} hours"
WINDOW_REFUSAL = "the Datadog intake refuses such events"

# The Datadog sites, by the name DD_SITE takes; each serves the API at https://api.<site>.
Site = Literal[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
]
SITES: dict[str, str] = {site: f"https://api.{site}" for site in get_args(Site)}

# A request body is {"data":[e1,e2,...]}: this much around the events, and a comma between.
_OPEN, _CLOSE = b'{"data":[', b"]}"
ENVELOPE = (_OPEN, _CLOSE)
ENVELOPE_BYTES = len(_OPEN) + len(_CLOSE)


def request_body(events: Sequence[bytes]) -> bytes:
    """``{"data":[...]}`` from events' JSON as stored, without re-encoding them."""
    return _OPEN + b",".join(events) + _CLOSE


def error_body(status: int, details: Iterable[str]) -> bytes:
    """The intake's error body for ``status``: ``{"errors":[{"status","title","detail"}]}``."""
    from http import HTTPStatus

    import orjson

    title = HTTPStatus(status).phrase
    errors = [{"status": str(status), "title": title, "detail": d} for d in details]
    return orjson.dumps({"errors": errors})


def error_details(body: bytes) -> list[str]:
    """Each error's detail (else its title, else the error itself) of a body in the error
    shape; none when the body is not that shape."""
    import orjson

    try:
        errors = orjson.loads(body)["errors"]
        return [
            str(e.get("detail") or e.get("title") or e) if isinstance(e, dict) else str(e)
            for e in errors
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return []


def error_detail(status: int, body: bytes, limit: int = 2000) -> str:
    """The details of an error body, joined; the raw text when it is not that shape."""
    details = error_details(body)
    if details:
        return "; ".join(details)[:limit]
    text = body.decode("utf-8", errors="replace").strip()
    return text[:limit] or f"HTTP {status}"
