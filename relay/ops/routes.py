"""The operator routes: ``/health``, ``/ready``, ``/metrics``, ``/status``, ``/openapi.json``.

Each answers from what the store, ingest and delivery publish: the outbox's counts and
readings, the ingest counts, and delivery's snapshot (``relay.delivery.snapshot``), never
the flusher. ``relay.app`` puts them on the application beside ingest's route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relay import __version__
from relay.config import OutboxSettings
from relay.ingest.guard import denied
from relay.ops.metrics import RelayCollector, exposition
from relay.ops.openapi import OPENAPI_PATH, document
from relay.ops.probes import Verdict, liveness, readiness
from relay.ops.problems import ProblemCounts
from relay.ops.status import snapshot
from relay.store.outbox import Outbox

# Keys of their own, apart from ingest's: these routes read only what configure() gives.
OUTBOX = web.AppKey("ops_outbox", Outbox)
OUTBOX_SETTINGS = web.AppKey("outbox_settings", OutboxSettings)
METRICS = web.AppKey("metrics", RelayCollector)
PROBLEMS = web.AppKey("problems", ProblemCounts)


async def get_health(request: web.Request) -> web.Response:
    """Liveness (``relay.ops.probes``): 200 while the loop answers and the writer lives,
    else 503."""
    return _probe_response(liveness(request.app[OUTBOX]))


async def get_ready(request: web.Request) -> web.Response:
    """Readiness for runners (``relay.ops.probes``): 200, or 503 saying which check fails."""
    return _probe_response(readiness(request.app[OUTBOX], request.app[OUTBOX_SETTINGS]))


def _probe_response(verdict: Verdict) -> web.Response:
    return web.json_response(verdict.body(), status=200 if verdict.passed else 503)


async def get_metrics(request: web.Request) -> web.Response:
    """The relay's metrics in the Prometheus text format (``relay.ops.metrics``)."""
    if (forbidden := denied(request)) is not None:
        return forbidden
    collector = request.app[METRICS]
    collector.readings = await request.app[OUTBOX].readings()
    collector.problems = await request.app[PROBLEMS].current()
    return web.Response(body=exposition(collector), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_status(request: web.Request) -> web.Response:
    """What the relay holds and does, and what needs an operator (``relay.ops.status``)."""
    app = request.app
    if (forbidden := denied(request)) is not None:
        return forbidden
    collector = app[METRICS]
    readings = await app[OUTBOX].readings()
    problems = await app[PROBLEMS].current()
    # Taken after the store's readings, as near as can be to the document's "now".
    delivery = None if collector.delivery is None else collector.delivery()
    document = snapshot(
        app[OUTBOX],
        readings,
        collector.ingest,
        app[OUTBOX_SETTINGS],
        delivery,
        collector.started_at,
        __version__,
        collector.webhooks,
        problems,
    )
    return web.json_response(document)


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of these endpoints (``relay.ops.openapi``)."""
    return web.json_response(document())


# Each path answers GET (and HEAD), in this order.
ROUTES: tuple[tuple[str, Callable[[web.Request], Awaitable[web.Response]]], ...] = (
    ("/health", get_health),
    ("/ready", get_ready),
    ("/metrics", get_metrics),
    ("/status", get_status),
    (OPENAPI_PATH, get_openapi),
)


def configure(
    app: web.Application,
    outbox: Outbox,
    outbox_settings: OutboxSettings,
    collector: RelayCollector,
) -> None:
    """Give ``app`` what the operator routes read (``relay.app`` routes to them)."""
    app[OUTBOX] = outbox
    app[OUTBOX_SETTINGS] = outbox_settings
    app[METRICS] = collector
    app[PROBLEMS] = ProblemCounts(outbox)
