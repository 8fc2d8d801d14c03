"""The runner-facing HTTP API: Datadog's ``POST /api/v2/ci/pipeline``, answered locally.

A request is decoded (content type, encoding, size), parsed and validated whole, and
committed to the outbox; only then does the runner get ``202 {}``.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from relay.config import ServerSettings
from relay.contract.schema import InvalidRequest, parse_request
from relay.errors import error_response
from relay.ingest.admission import Busy, ParseBudget
from relay.ingest.guard import INGEST_COUNTS, denied, refuse
from relay.ingest.reading import Refused, read_body
from relay.store.outbox import Outbox
from relay.store.writer import OutboxClosed, OutboxFull, OutboxUnavailable

logger = structlog.get_logger(__name__)

OUTBOX = web.AppKey("outbox", Outbox)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
RETRY_AFTER_S = web.AppKey("retry_after_s", int)
PARSE_BUDGET = web.AppKey("parse_budget", ParseBudget)

_ACCEPTED = b"{}"
# While runners are refused with 503, one warning line per this many seconds.
_REPORT_S = 10.0
# Bodies larger than this (up to 5 MiB; a 1000-event request is about 0.5 MB) are parsed
# and validated in a worker thread, so that the event loop keeps answering other requests
# through the few hundred milliseconds they can take; smaller ones are parsed inline, where
# a thread hop would add to every request of the ingest path.
PARSE_INLINE_MAX_BYTES = 1024 * 1024


async def post_pipeline(request: web.Request) -> web.Response:
    """Validate the events of one request and answer 202 once they are durable."""
    app = request.app
    counts = app[INGEST_COUNTS]
    counts.requests += 1
    if (forbidden := denied(request)) is not None:
        return forbidden
    try:
        body = await read_body(request, app[MAX_BODY_BYTES])
        budget = app[PARSE_BUDGET]
        if not budget.take(len(body)):  # no coroutine to await when it fits (most requests)
            await budget.acquire(len(body))
        try:
            if len(body) <= PARSE_INLINE_MAX_BYTES:
                events = parse_request(body)
            else:
                events = await asyncio.to_thread(parse_request, body)
            counts.events += len(events)
            await app[OUTBOX].append(events)
        finally:
            budget.release(len(body))
    except InvalidRequest as exc:
        return refuse(request, 400, *exc.problems)
    except Refused as exc:
        return refuse(request, exc.status, *exc.details)
    except (OutboxFull, OutboxUnavailable, OutboxClosed) as exc:
        refused = counts.refused
        if isinstance(exc, OutboxFull):
            refused["outbox_full"] += 1
            counts.last_full_at = time.time()
        else:
            refused["store_unavailable"] += 1
        retry = {"Retry-After": str(app[RETRY_AFTER_S])}
        total = refused["outbox_full"] + refused["store_unavailable"]
        app[STORE_REFUSALS].refused(str(exc), total)
        return error_response(503, f"the relay cannot store events now: {exc}", headers=retry)
    except Busy as exc:
        counts.refused["busy"] += 1
        retry = {"Retry-After": str(app[RETRY_AFTER_S])}
        return error_response(503, str(exc), headers=retry)
    except ConnectionError as exc:
        # The runner hung up (or was dropped for slowness) before its body arrived: nothing
        # was stored and nobody is left to answer. Routine, so not an error.
        logger.info("client went away", path=request.path, peer=request.remote, error=str(exc))
        return web.Response(status=499, reason="Client Closed Request")
    except Exception:
        # A bug must not leak a traceback to the runner; the log keeps it for the operator.
        logger.exception("request failed", path=request.path)
        return error_response(500, "the relay failed to handle this request; see its log")
    counts.requests_accepted += 1
    return web.Response(status=202, body=_ACCEPTED, content_type="application/json")


class _StoreRefusals:
    """503s for a full or failing outbox: a warning at the first, then one a ``_REPORT_S``
    with how many there were, rather than one line per runner request. The count comes
    from the ingest counts' running totals."""

    def __init__(self) -> None:
        self._reported_total = 0
        self._last_report = -_REPORT_S

    def refused(self, reason: str, total: int) -> None:
        """Report, if due, the 503s since the last report; ``total`` counts them all."""
        now = time.monotonic()
        if now - self._last_report < _REPORT_S:
            return
        logger.warning(
            "runners refused with 503: the outbox cannot take events",
            reason=reason,
            refused=total - self._reported_total,
            hint="see the outbox limits (outbox.max_events, outbox.max_bytes) and its disk",
        )
        self._last_report, self._reported_total = now, total


STORE_REFUSALS = web.AppKey("store_refusals", _StoreRefusals)


def configure(
    app: web.Application,
    outbox: Outbox,
    max_body_bytes: int,
    retry_after_s: int,
    parse_budget: ParseBudget | None = None,
) -> None:
    """Give ``app`` what ``post_pipeline`` reads (``relay.app`` routes to it); the ingest
    counts and token (``relay.ingest.guard``) are the app's own."""
    app[OUTBOX] = outbox
    app[MAX_BODY_BYTES] = max_body_bytes
    app[RETRY_AFTER_S] = retry_after_s
    defaults = ServerSettings()
    app[PARSE_BUDGET] = parse_budget or ParseBudget(
        defaults.max_parsing_bytes, defaults.parse_wait_s
    )
    app[STORE_REFUSALS] = _StoreRefusals()
