"""The ingest token guard, and the one way the relay's HTTP edge refuses a request.

Every route refuses alike (Datadog's error shape, counted by reason in ``IngestCounts``,
one log line), and the ingest token, when set, guards ingest, ``/metrics`` and ``/status``.
Both ``relay.ingest.server`` and the operator routes (``relay.ops.routes``) use it; it
belongs to ingest because the token is ingest's (``server.ingest_token``) and its
refusals are counted with the runner requests.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from relay.errors import error_response
from relay.ingest.counts import IngestCounts
from relay.keyfiles import KeyFile, same_secret

logger = structlog.get_logger(__name__)

INGEST_TOKEN = web.AppKey("ingest_token", KeyFile)
INGEST_COUNTS = web.AppKey("ingest_counts", IngestCounts)
# The reason label of ci_relay_requests_refused_total, by the status a runner got.
_REFUSAL_REASONS = {
    400: "invalid",
    403: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_encoding",
}


def _authorized(request: web.Request, token: str) -> bool:
    """True when the request carries ``token`` in DD-API-KEY or Authorization: Bearer."""
    headers = request.headers
    given = headers.get("DD-API-KEY")
    if given is None:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    return given is not None and same_secret(given, token)


def denied(request: web.Request) -> web.Response | None:
    """403 when the relay has an ingest token and the request does not carry it, else None."""
    token = request.app[INGEST_TOKEN].value
    if token is None or _authorized(request, token):
        return None
    return refuse(
        request,
        403,
        "this relay requires its ingest token (server.ingest_token) in the DD-API-KEY header "
        "or as Authorization: Bearer",
    )


def refuse(
    request: web.Request, status: int, *details: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The error answer for ``status``, counted by reason and logged."""
    request.app[INGEST_COUNTS].refused[_REFUSAL_REASONS.get(status, str(status))] += 1
    logger.info(
        "request refused",
        status=status,
        reason=details[0],
        problems=len(details),
        path=request.path,
        peer=request.remote,
    )
    return error_response(status, *details, headers=headers)
