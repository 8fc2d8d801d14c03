"""Wiring of the running relay: outbox, HTTP server, flusher, signals and shutdown.

Shutdown order keeps the promise of a 202: stop accepting connections, let the requests
in progress finish their commits, give the flusher a bounded final flush, then close the
database. The drain and the final flush share one budget, ``flusher.shutdown_grace_s``,
counted from the stop signal, so that the whole shutdown fits a container's stop timeout.
A side task (outbox writer, flusher) that dies stops the whole process with a non-zero
status rather than leaving a relay that accepts events and forwards none.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import structlog
from aiohttp import web

from relay import __version__
from relay.admission import ParseBudget
from relay.config import Settings
from relay.connections import ConnectionGuard, connection_bound, raise_open_file_limit
from relay.flusher import Flusher
from relay.outbox import Outbox
from relay.server import app_runner, create_app
from relay.upstream import Upstream

logger = structlog.get_logger(__name__)

EXIT_CANNOT_LISTEN = 2
_AIOHTTP_CEIL_THRESHOLD_S = 5.0  # aiohttp.helpers.ceil_timeout's default


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (status 0), a side task dies (1), or listening fails (2)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP would otherwise end the process without a shutdown; reload is not offered yet.
    loop.add_signal_handler(signal.SIGHUP, _on_hangup)

    started = time.monotonic()
    # Unwinds in reverse: stop accepting (requests in progress finish their commits), final
    # flush, close the upstream client, close the outbox. Also on a failed start, so that no
    # database thread keeps the process alive.
    async with contextlib.AsyncExitStack() as stack:
        outbox = await Outbox.open(settings.outbox)
        stack.push_async_callback(outbox.close)
        # After the outbox: a refused outbox is one line on stderr and nothing else.
        guard = _connection_guard(settings)
        upstream = Upstream(settings.upstream)
        stack.push_async_callback(upstream.close)
        flusher = Flusher(outbox, upstream, settings.flusher, settings.retry)
        flusher_task = asyncio.create_task(flusher.run(), name="flusher")
        budget = ShutdownBudget(settings.flusher.shutdown_grace_s)
        stack.push_async_callback(_finish_flusher, flusher, flusher_task, budget)
        app = create_app(
            outbox,
            settings.server.max_body_bytes,
            settings.outbox.retry_after_s,
            settings.outbox,
            flusher,
            ParseBudget(settings.server.max_parsing_bytes, settings.server.parse_wait_s),
        )
        web_runner = app_runner(app, guard, drain_s=budget.drain_s())
        await web_runner.setup()
        stack.push_async_callback(web_runner.cleanup)
        site = web.TCPSite(web_runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except OSError as exc:
            where = f"{settings.server.host}:{settings.server.port}"
            logger.error("cannot listen", address=where, error=exc.strerror or str(exc))
            return EXIT_CANNOT_LISTEN
        host, port = web_runner.addresses[0][:2]
        logger.info(
            "listening",
            version=__version__,
            host=host,
            port=port,
            pending_events=outbox.counts.events,
            upstream=upstream.display_url,
            config=settings.redacted(),
        )
        status = await _wait_for_stop(stop, outbox.task, flusher_task)
        budget.start()
        logger.info(
            "stopping",
            reason="signal" if status == 0 else "task failed",
            grace_s=budget.total_s,
        )
    logger.info(
        "stopped",
        uptime_s=round(time.monotonic() - started, 1),
        accepted=outbox.counts.accepted_total,
        delivered=flusher.stats.delivered,
        dead_lettered=flusher.stats.dead_lettered,
        pending=outbox.counts.events,
    )
    return status


def _on_hangup() -> None:
    logger.warning("SIGHUP received", action="ignored: reload is not supported, restart instead")


def _connection_guard(settings: Settings) -> ConnectionGuard:
    """Raise the open-file limit, then bound connections below it."""
    limit = raise_open_file_limit()
    bound = connection_bound(settings.server.max_connections, limit.soft)
    logger.info(
        "open-file limit",
        limit=limit.soft,
        hard_limit=limit.hard,
        raised_from=limit.raised_from,
        max_connections=bound,
    )
    return ConnectionGuard(settings.server.read_timeout_s, bound)


class ShutdownBudget:
    """The seconds a shutdown may take, counted from ``start()`` (the stop signal)."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self._deadline: float | None = None

    def drain_s(self) -> float:
        """The timeout for requests in progress, such that the drain ends within the budget.

        aiohttp waits up to that long twice at worst (for the handlers, then for their
        cancellation), rounding each wait over 5 s up to a whole second of the loop clock.
        The flusher delivers during the drain all the same; the final flush gets the rest.
        """
        half = self.total_s / 2
        return half if half <= _AIOHTTP_CEIL_THRESHOLD_S else half - 1.0

    def start(self) -> None:
        self._deadline = time.monotonic() + self.total_s

    def remaining_s(self) -> float:
        """What is left of the budget; all of it on a failed start, which never started it."""
        if self._deadline is None:
            self.start()
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())


async def _finish_flusher(
    flusher: Flusher, task: asyncio.Task[None], budget: ShutdownBudget
) -> None:
    """A final flush within what the drain left of the budget; what is left of the outbox
    stays on disk for the next start."""
    flusher.stop()
    await asyncio.wait({task}, timeout=budget.remaining_s())
    if not task.done():
        # Cancelling mid-request is safe: events are deleted only after a 2xx.
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _wait_for_stop(stop: asyncio.Event, *tasks: asyncio.Task[None]) -> int:
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    if stopped in done:
        return 0
    stopped.cancel()
    for task in done:
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        logger.error("task died", task=task.get_name(), exc_info=exc)
    return 1
