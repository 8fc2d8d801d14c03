"""The runner-facing HTTP API: Datadog's ``POST /api/v2/ci/pipeline``, answered locally.

A request is decoded (content type, encoding, size), parsed and validated whole, and
committed to the outbox; only then does the runner get ``202 {}``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import zlib

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST

from relay import __version__
from relay.config import OutboxSettings, ServerSettings
from relay.contract.exceptions import RelayError
from relay.contract.intake import PIPELINE_PATH
from relay.contract.schema import InvalidRequest, parse_request
from relay.delivery.flusher import Flusher
from relay.errors import error_response
from relay.ingest.admission import Busy, ParseBudget
from relay.ingest.connections import ConnectionGuard, RelayRunner
from relay.keyfiles import KeyFile
from relay.ops.metrics import RelayCollector, exposition
from relay.ops.openapi import OPENAPI_PATH, document
from relay.ops.probes import Verdict, liveness, readiness
from relay.ops.status import snapshot
from relay.store.outbox import Outbox
from relay.store.writer import OutboxClosed, OutboxFull, OutboxUnavailable

logger = structlog.get_logger(__name__)

OUTBOX = web.AppKey("outbox", Outbox)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
RETRY_AFTER_S = web.AppKey("retry_after_s", int)
OUTBOX_SETTINGS = web.AppKey("outbox_settings", OutboxSettings)
METRICS = web.AppKey("metrics", RelayCollector)
PARSE_BUDGET = web.AppKey("parse_budget", ParseBudget)
INGEST_TOKEN = web.AppKey("ingest_token", KeyFile)
# The reason label of ci_relay_requests_refused_total, by the status a runner got.
_REFUSAL_REASONS = {
    400: "invalid",
    403: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_encoding",
}

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
    counts = app[METRICS].ingest
    counts.requests += 1
    if (denied := _denied(request)) is not None:
        return denied
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
        return _refuse(request, 400, *exc.problems)
    except _Refused as exc:
        return _refuse(request, exc.status, *exc.details)
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


async def get_health(request: web.Request) -> web.Response:
    """Liveness (``relay.ops.probes``): 200 while the loop answers and the writer lives,
    else 503."""
    return _probe_response(liveness(request.app[OUTBOX]))


async def get_ready(request: web.Request) -> web.Response:
    """Readiness for runners (``relay.ops.probes``): 200, or 503 saying which check fails."""
    return _probe_response(readiness(request.app[OUTBOX], request.app[OUTBOX_SETTINGS]))


def _authorized(request: web.Request, token: str) -> bool:
    """True when the request carries ``token`` in DD-API-KEY or Authorization: Bearer."""
    headers = request.headers
    given = headers.get("DD-API-KEY")
    if given is None:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    # Constant time: how long a refusal takes says nothing about how much of a guess matched.
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "replace"), token.encode()
    )


def _denied(request: web.Request) -> web.Response | None:
    """403 when the relay has an ingest token and the request does not carry it, else None."""
    token = request.app[INGEST_TOKEN].value
    if token is None or _authorized(request, token):
        return None
    return _refuse(
        request,
        403,
        "this relay requires its ingest token (server.ingest_token) in the DD-API-KEY header "
        "or as Authorization: Bearer",
    )


def _probe_response(verdict: Verdict) -> web.Response:
    return web.json_response(verdict.body(), status=200 if verdict.passed else 503)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_type != "application/json":
        raise _Refused(
            400, f"Content-Type must be application/json, not {request.content_type or 'missing'}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"body of {request.content_length} bytes exceeds the {limit} limit")
    try:
        raw = await request.read()  # bounded by client_max_size, which create_app sets to limit
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
    from the metrics' running totals."""

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


def _refuse(
    request: web.Request, status: int, *details: str, headers: dict[str, str] | None = None
) -> web.Response:
    request.app[METRICS].ingest.refused[_REFUSAL_REASONS.get(status, str(status))] += 1
    logger.info(
        "request refused",
        status=status,
        reason=details[0],
        problems=len(details),
        path=request.path,
        peer=request.remote,
    )
    return error_response(status, *details, headers=headers)


async def not_found(request: web.Request) -> web.Response:
    """404 in Datadog's shape for any path the relay does not serve."""
    detail = f"no such path {request.path}; the relay serves POST {PIPELINE_PATH}"
    return _refuse(request, 404, detail)


async def method_not_allowed(request: web.Request) -> web.Response:
    """405 in Datadog's shape, with Allow, for a known path and a wrong method."""
    allowed = "POST" if request.path == PIPELINE_PATH else "GET, HEAD"
    detail = f"method {request.method} is not allowed on {request.path}; use {allowed}"
    return _refuse(request, 405, detail, headers={"Allow": allowed})


async def get_metrics(request: web.Request) -> web.Response:
    """The relay's metrics in the Prometheus text format (``relay.ops.metrics``)."""
    if (denied := _denied(request)) is not None:
        return denied
    collector = request.app[METRICS]
    collector.readings = await request.app[OUTBOX].readings()
    return web.Response(body=exposition(collector), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_status(request: web.Request) -> web.Response:
    """What the relay holds and does, and what needs an operator (``relay.ops.status``)."""
    app = request.app
    if (denied := _denied(request)) is not None:
        return denied
    collector = app[METRICS]
    document = snapshot(
        app[OUTBOX],
        await app[OUTBOX].readings(),
        collector.ingest,
        app[OUTBOX_SETTINGS],
        collector.flusher,
        collector.started_at,
        __version__,
    )
    return web.json_response(document)


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of these endpoints (``relay.ops.openapi``)."""
    return web.json_response(document())


def create_app(
    outbox: Outbox,
    max_body_bytes: int,
    retry_after_s: int,
    outbox_settings: OutboxSettings | None = None,
    flusher: Flusher | None = None,
    parse_budget: ParseBudget | None = None,
    ingest_token: KeyFile | None = None,
) -> web.Application:
    """The aiohttp application; run it with ``app_runner()`` so bodies arrive undecoded.

    With an ``ingest_token`` holding a value, ingest, ``/metrics`` and ``/status`` require
    it; the probes stay open.

    404 and 405 are routes of their own rather than a middleware: they answer in
    Datadog's shape, and the ingest path does not pay for a middleware on every request.
    """
    app = web.Application(client_max_size=max_body_bytes)
    app[OUTBOX] = outbox
    app[MAX_BODY_BYTES] = max_body_bytes
    app[RETRY_AFTER_S] = retry_after_s
    defaults = ServerSettings()
    app[PARSE_BUDGET] = parse_budget or ParseBudget(
        defaults.max_parsing_bytes, defaults.parse_wait_s
    )
    app[STORE_REFUSALS] = _StoreRefusals()
    app[METRICS] = RelayCollector(outbox, flusher)
    app[INGEST_TOKEN] = ingest_token or KeyFile("server.ingest_token", None, None)
    app.router.add_post(PIPELINE_PATH, post_pipeline)
    app.router.add_route("*", PIPELINE_PATH, method_not_allowed)
    app[OUTBOX_SETTINGS] = outbox_settings or OutboxSettings()
    for path, handler in (
        ("/health", get_health),
        ("/ready", get_ready),
        ("/metrics", get_metrics),
        ("/status", get_status),
        (OPENAPI_PATH, get_openapi),
    ):
        app.router.add_get(path, handler)  # and HEAD
        app.router.add_route("*", path, method_not_allowed)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def app_runner(
    app: web.Application, guard: ConnectionGuard | None = None, drain_s: float = 60.0
) -> RelayRunner:
    """A runner that leaves decompression to ``_decode``, which bounds its output, and
    whose connections ``guard`` watches (read timeout, connection bound, protocol errors);
    its cleanup gives requests in progress ``drain_s`` to finish."""
    return RelayRunner(
        app, guard or ConnectionGuard(), drain_s, auto_decompress=False, access_log=None
    )
