"""The HTTP application: ingest and operator routes on one aiohttp app, with the token guard.

Ingest (``relay.ingest.server``) and the operator routes (``relay.ops.routes``) each take
what they read from the app; this module builds it and holds the one table of routes,
with the answers for a path it does not serve (404) and a wrong method (405). Delivery
is seen only through its snapshot (``relay.delivery.snapshot``).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from relay.config import OutboxSettings
from relay.contract.intake import PIPELINE_PATH
from relay.delivery.snapshot import DeliverySnapshot, RetryAsked
from relay.ingest import server, webhooks
from relay.ingest.admission import ParseBudget
from relay.ingest.connections import ConnectionGuard, RelayRunner
from relay.ingest.counts import IngestCounts
from relay.ingest.guard import INGEST_COUNTS, INGEST_TOKEN, refuse
from relay.ingest.webhook_sources import SOURCES
from relay.keyfiles import KeyFile
from relay.ops import routes
from relay.ops.metrics import RelayCollector
from relay.ops.retry import RETRY, RETRY_PATH, post_retry
from relay.store.outbox import Outbox
from relay.ui import routes as ui


async def not_found(request: web.Request) -> web.Response:
    """404 in Datadog's shape for any path the relay does not serve."""
    detail = f"no such path {request.path}; the relay serves POST {PIPELINE_PATH}"
    return refuse(request, 404, detail)


async def method_not_allowed(request: web.Request) -> web.Response:
    """405 in Datadog's shape, with Allow, for a known path and a wrong method."""
    allowed = "POST" if request.path in _POST_PATHS else "GET, HEAD"
    detail = f"method {request.method} is not allowed on {request.path}; use {allowed}"
    return refuse(request, 405, detail, headers={"Allow": allowed})


_POST_PATHS = frozenset({PIPELINE_PATH, RETRY_PATH, *(source.path for source in SOURCES)})


def create_app(
    outbox: Outbox,
    max_body_bytes: int,
    retry_after_s: int,
    outbox_settings: OutboxSettings | None = None,
    delivery: Callable[[], DeliverySnapshot] | None = None,
    parse_budget: ParseBudget | None = None,
    ingest_token: KeyFile | None = None,
    webhook_secrets: dict[str, KeyFile] | None = None,
    retry: Callable[[], RetryAsked] | None = None,
    dry_run: bool = False,
) -> web.Application:
    """The aiohttp application; run it with ``app_runner()`` so bodies arrive undecoded.

    ``delivery`` gives delivery's snapshot for ``/metrics`` and ``/status``
    (``Flusher.snapshot``); without it they show no delivery. With an ``ingest_token``
    holding a value, ingest, ``/metrics`` and ``/status`` require it; the probes stay open.
    ``webhook_secrets`` by source (``gitlab``, ``github``): a source is served when its
    secret holds a value (``relay.ingest.webhooks``); webhooks never need the ingest token.
    ``retry`` is delivery's "try now" (``Flusher.retry_now``) for ``POST /retry``.
    ``dry_run``: nothing is sent upstream, which the page (``relay.ui``) says.

    404 and 405 are routes of their own rather than a middleware: they answer in
    Datadog's shape, and the ingest path does not pay for a middleware on every request.
    """
    app = web.Application(client_max_size=max_body_bytes)
    counts = IngestCounts()
    app[INGEST_COUNTS] = counts
    app[INGEST_TOKEN] = ingest_token or KeyFile("server.ingest_token", None, None)
    server.configure(app, outbox, max_body_bytes, retry_after_s, parse_budget)
    webhooks.configure(app, webhook_secrets)
    collector = RelayCollector(outbox, delivery, counts, app[webhooks.WEBHOOK_COUNTS])
    routes.configure(app, outbox, outbox_settings or OutboxSettings(), collector)
    app.router.add_post(PIPELINE_PATH, server.post_pipeline)
    app.router.add_route("*", PIPELINE_PATH, method_not_allowed)
    for source in SOURCES:
        app.router.add_route("*", source.path, method_not_allowed)
    if retry is not None:
        app[RETRY] = retry
    app.router.add_post(RETRY_PATH, post_retry)
    app.router.add_route("*", RETRY_PATH, method_not_allowed)
    for path, handler in routes.ROUTES:
        app.router.add_get(path, handler)  # and HEAD
        app.router.add_route("*", path, method_not_allowed)
    # The page (GET /ui); the outbox settles events as not sent exactly in a dry run.
    ui.configure(app, outbox, dry_run=dry_run)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def app_runner(
    app: web.Application, guard: ConnectionGuard | None = None, drain_s: float = 60.0
) -> RelayRunner:
    """A runner that leaves decompression to ingest (``relay.ingest.server``), which bounds
    its output, and whose connections ``guard`` watches (read timeout, connection bound,
    protocol errors); its cleanup gives requests in progress ``drain_s`` to finish."""
    return RelayRunner(
        app, guard or ConnectionGuard(), drain_s, auto_decompress=False, access_log=None
    )
