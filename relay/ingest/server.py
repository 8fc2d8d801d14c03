"""The runner-facing HTTP API: Datadog's ``POST /api/v2/ci/pipeline``, answered locally.

A request is decoded (content type, encoding, size), parsed and validated whole, and
committed to the outbox; only then does the runner get ``202 {}``.
"""

from __future__ import annotations

import asyncio
import time
import zlib

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from relay.config import ServerSettings
from relay.contract.exceptions import RelayError
from relay.contract.schema import InvalidRequest, parse_request
from relay.errors import error_response
from relay.ingest.admission import Busy, ParseBudget
from relay.ingest.guard import INGEST_COUNTS, denied, refuse
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


class _Refused(RelayError):
    """The request is refused with ``status``; ``details`` say why."""

    def __init__(self, status: int, *details: str) -> None:
        super().__init__(details[0])
        self.status = status
        self.details = details


async def post_pipeline(request: web.Request) -> web.Response:
    """Validate the events of one request and answer 202 once they are durable."""
    app = request.app
    counts = app[INGEST_COUNTS]
    counts.requests += 1
    if (forbidden := denied(request)) is not None:
        return forbidden
    try:
        body = await _read_body(request, app[MAX_BODY_BYTES])
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
    except _Refused as exc:
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


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_type != "application/json":
        raise _Refused(
            400, f"Content-Type must be application/json, not {request.content_type or 'missing'}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"body of {request.content_length} bytes exceeds the {limit} limit")
    try:
        raw = await request.read()  # bounded by client_max_size, which relay.app sets to limit
    except web.HTTPRequestEntityTooLarge:
        raise _Refused(413, f"body exceeds the {limit} byte limit") from None
    except RequestPayloadError as exc:  # a bad chunk, a wrong length: the client's fault
        raise _Refused(400, f"the request body is not valid HTTP: {exc}") from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    return _decode(raw, encoding, limit)


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, refused past ``limit`` bytes (no zip bombs)."""
    if encoding in ("identity", ""):
        return raw
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # HTTP's deflate is zlib-wrapped, but some clients send a raw deflate stream.
        wbits = zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise _Refused(415, f"Content-Encoding {encoding} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise _Refused(400, f"body is not valid {encoding} data: {exc}") from None
    if len(body) > limit:
        raise _Refused(413, f"decompressed body exceeds the {limit} byte limit")
    if not inflater.eof:
        raise _Refused(400, f"body is truncated {encoding} data")
    # A second gzip member or garbage after the first: refused, never silently dropped.
    extra = len(inflater.unused_data) + len(inflater.unconsumed_tail)
    if extra:
        raise _Refused(400, f"body has {extra} bytes after the end of the {encoding} data")
    return body


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
