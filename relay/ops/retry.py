"""Retry now: once an operator has fixed the upstream (a key, a proxy, an outage over),
delivery tries at once instead of waiting out its backoff or its pause.

``POST /retry`` asks it of the running relay (guarded by the ingest token as ``/status``
is); ``ci-relay retry`` sends that request, found through the same settings or ``--url``;
SIGUSR1 to the daemon does the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

# typing's TypedDict is not enough for pydantic before Python 3.12 (GET /openapi.json).
from typing_extensions import TypedDict

from relay.config import load_settings
from relay.delivery.snapshot import RetryAsked
from relay.errors import error_response
from relay.ingest.guard import denied
from relay.keyfiles import KeyFile
from relay.ops.status import EXIT_UNREACHABLE
from relay.ops.status_client import Unreachable, ask, relay_address

RETRY_PATH = "/retry"
RETRY: web.AppKey[Callable[[], RetryAsked]] = web.AppKey("retry")


class RetryAnswer(TypedDict):
    """``POST /retry``'s answer: the state delivery was in, the wait cut short, and whether
    it tries now."""

    state: str
    cut_wait_s: float
    trying: bool


async def post_retry(request: web.Request) -> web.Response:
    """Ask delivery to try now (``Flusher.retry_now``): 202 with what it found."""
    if (forbidden := denied(request)) is not None:
        return forbidden
    retry = request.app.get(RETRY)
    if retry is None:
        # Only a relay built without delivery (tests, tools) has none: nothing to retry.
        return error_response(409, "delivery is not running in this relay: nothing to retry")
    asked = retry()
    answer: RetryAnswer = {
        "state": asked.state,
        "cut_wait_s": round(asked.cut_wait_s, 1),
        "trying": asked.trying,
    }
    return web.json_response(answer, status=202)


def retry(config: Path | None, url: str | None, timeout_s: float) -> int:
    """``ci-relay retry``: POST /retry to the running relay and say what it did."""
    server = load_settings(config).server
    address = relay_address(server, url)
    token = KeyFile.ingest_token(server).value
    try:
        answer = ask(address, RETRY_PATH, token, timeout_s, method="POST")
    except Unreachable as exc:
        print(f"ci-relay: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(_said(answer))
    return 0


def _said(answer: RetryAnswer) -> str:
    state = answer["state"]
    if not answer["trying"]:
        why = "it has no API key" if state == "no_api_key" else "it was asked less than 1 s ago"
        return f"delivery is {state}; not tried again now: {why}"
    cut = answer["cut_wait_s"]
    waited = f", {cut:g} s before its next try" if cut else ""
    return f"delivery was {state}{waited}: it tries now (ci-relay status shows the outcome)"
