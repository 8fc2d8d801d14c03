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
import ssl
import time
from pathlib import Path
from typing import NoReturn

import structlog
from aiohttp import web

from relay import __version__, log
from relay.app import app_runner, create_app
from relay.config import (
    ConfigError,
    ServerSettings,
    Settings,
    load_settings,
    unknown_variables,
)
from relay.contract.exceptions import RelayError
from relay.delivery.flusher import Flusher
from relay.delivery.upstream import Upstream
from relay.ingest.admission import ParseBudget
from relay.ingest.binding import bind
from relay.ingest.connections import ConnectionGuard, connection_bound, raise_open_file_limit
from relay.keyfiles import KeyFile, check_pem_file
from relay.store.outbox import Outbox
from relay.store.upkeep import upkeep

logger = structlog.get_logger(__name__)

_AIOHTTP_CEIL_THRESHOLD_S = 5.0  # aiohttp.helpers.ceil_timeout's default
# How often key files are checked for a change (a Secret's update, a rotated file).
KEY_FILE_POLL_S = 2.0


async def serve(settings: Settings, config_file: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT (status 0) or a side task dies (1); a setting that cannot be
    used, the address included, is a UserError (the command exits 2) before anything opens.

    ``config_file`` is read again on SIGHUP, for the log level.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Read before anything opens: a key file or certificate that cannot be used stops the
    # relay with one line (ConfigError) rather than a relay that cannot do its work.
    for line in unknown_variables():
        logger.warning(line)
    api_key = await KeyFile.load_api_key(settings.upstream)
    token = await KeyFile.load_ingest_token(settings.server)
    webhook_secrets = await KeyFile.load_webhook_secrets(settings.webhooks)
    tls = listener_tls(settings.server)
    # So is the proxy variable that applies to the upstream (looked up once, here).
    upstream = Upstream(settings.upstream, api_key)
    on_change = _KeyChanges(api_key, token, *webhook_secrets.values())
    # SIGHUP would otherwise end the process without a shutdown.
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, on_change, config_file)

    started = time.monotonic()
    # Unwinds in reverse: stop accepting (requests in progress finish their commits), final
    # flush, close the upstream client, close the outbox. Also on a failed start, so that no
    # database thread keeps the process alive.
    async with contextlib.AsyncExitStack() as stack:
        # Bound before anything is made: a port in use stops the relay here (CannotListen).
        sockets = bind(settings.server.host, settings.server.port)
        for sock in sockets:
            stack.callback(sock.close)
        outbox = await Outbox.open(
            settings.outbox,
            history=settings.history.max_events > 0,
            dry_run=not settings.upstream.enabled,
        )
        stack.push_async_callback(outbox.close)
        # After the outbox: a refused outbox is one line on stderr and nothing else.
        guard = _connection_guard(settings, tls)
        stack.push_async_callback(upstream.close)
        flusher = Flusher(outbox, upstream, settings.flusher, settings.retry)
        flusher_task = asyncio.create_task(flusher.run(), name="flusher")
        budget = ShutdownBudget(settings.flusher.shutdown_grace_s)
        stack.push_async_callback(_finish_flusher, flusher, flusher_task, budget)
        on_change.flusher = flusher
        # An operator's "the upstream is fixed, try now" (as POST /retry, ci-relay retry).
        loop.add_signal_handler(signal.SIGUSR1, flusher.retry_now)
        watcher = asyncio.create_task(_watch_key_files(on_change), name="key-files")
        stack.callback(watcher.cancel)
        pruner = asyncio.create_task(
            upkeep(outbox, settings.webhooks, settings.history), name="upkeep"
        )
        stack.callback(pruner.cancel)
        app = create_app(
            outbox,
            settings.server.max_body_bytes,
            settings.outbox.retry_after_s,
            settings.outbox,
            flusher.snapshot,
            ParseBudget(settings.server.max_parsing_bytes, settings.server.parse_wait_s),
            token,
            webhook_secrets,
            flusher.retry_now,
            dry_run=upstream.dry_run,
        )
        web_runner = app_runner(app, guard, drain_s=budget.drain_s())
        await web_runner.setup()
        stack.push_async_callback(web_runner.cleanup)
        # A plain TCP listener even with TLS: the guard's connections do the handshake, so
        # that a client stalling in it is bounded as one stalling in its request head.
        for sock in sockets:
            await web.SockSite(web_runner, sock).start()
        host, port = web_runner.addresses[0][:2]
        listening: dict[str, object] = {
            "version": __version__,
            "host": host,
            "port": port,
            "tls": tls is not None,
            "ingest_token": token.value is not None,
            "webhooks": [name for name, secret in webhook_secrets.items() if secret.value] or None,
            "outbox": str(settings.outbox.path),
            "pending_events": outbox.counts.events,
            "upstream": upstream.display_url,
            "api_key": upstream.has_api_key,
        }
        if upstream.dry_run:
            listening["dry_run"] = "events are validated, kept and shown at /ui; nothing is sent"
        if not log.for_people():  # a person gets one short line; check-config shows the rest
            listening["config"] = settings.redacted()
        logger.info("listening", **listening)
        if token.value is None and not settings.server.loopback_only:
            logger.warning(OPEN_LISTENER, host=settings.server.host, hint=OPEN_LISTENER_HINT)
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
        delivered=outbox.counts.delivered_total,
        dead_lettered=outbox.counts.dead_lettered_total,
        pending=outbox.counts.events,
    )
    return status


OPEN_LISTENER = "listening beyond loopback without an ingest token: anyone who reaches it can post"
OPEN_LISTENER_HINT = "set server.ingest_token_file (runners send it as DD-API-KEY)"


class _EncryptedKey(RelayError):
    """The private key asked for a pass phrase."""


def _no_pass_phrase() -> NoReturn:
    # OpenSSL asks for a pass phrase only for an encrypted key, and without this callback
    # asks the terminal: the relay would wait at start for an answer no one gives.
    raise _EncryptedKey


def listener_tls(server: ServerSettings) -> ssl.SSLContext | None:
    """The listener's TLS context when a certificate is configured; ConfigError if unusable."""
    if server.tls_cert_file is None or server.tls_key_file is None:
        return None
    for name, path in (
        ("tls_cert_file", server.tls_cert_file),
        ("tls_key_file", server.tls_key_file),
    ):
        check_pem_file(f"server.{name}", path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file, _no_pass_phrase)
    except _EncryptedKey:
        raise ConfigError(
            f"invalid config: server.tls_key_file: {server.tls_key_file}: the private key is "
            "encrypted, and the relay never asks for a pass phrase: decrypt it once "
            f"(openssl pkey -in {server.tls_key_file} -out NEW_KEY) and name the new file, "
            "readable by the relay's user only"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"invalid config: server.tls_cert_file / tls_key_file: {server.tls_cert_file}, "
            f"{server.tls_key_file}: {reason}"
        ) from None
    return context


class _KeyChanges:
    """Re-reads the key files (all, or those changed on disk) and tells who uses them."""

    def __init__(self, api_key: KeyFile, *others: KeyFile) -> None:
        self._api_key = api_key
        self._others = others  # read where they are used: the ingest token, webhook secrets
        self.flusher: Flusher | None = None  # told of a new API key once it runs
        # Set by SIGHUP: the watcher reads every file, changed or not. One task reads, so a
        # SIGHUP never races a poll of the same file.
        self.hangup = asyncio.Event()

    async def reload(self, only_changed: bool) -> None:
        """Read each key file again (with ``only_changed``, those changed on disk)."""
        # All at once: a file stuck in its file system does not hold up the others' checks.
        new_key, *_ = await asyncio.gather(
            self._api_key.refresh(only_changed),
            *(key.refresh(only_changed) for key in self._others),
        )
        if new_key and self.flusher is not None:
            self.flusher.api_key_changed()


async def _watch_key_files(changes: _KeyChanges) -> None:
    """Apply a change of a key file within ``KEY_FILE_POLL_S``, and read them all on SIGHUP.

    The checks and reads run off the event loop (``KeyFile.refresh``): a key file swapped for
    a FIFO, or on a file system that hangs, never stalls ingest or the probes.
    """
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changes.hangup.wait(), KEY_FILE_POLL_S)
        hangup = changes.hangup.is_set()
        changes.hangup.clear()
        await changes.reload(only_changed=not hangup)


def _on_hangup(changes: _KeyChanges, config_file: Path | None) -> None:
    """SIGHUP: read the key files and the log level again; other settings need a restart."""
    level = None
    try:
        level = load_settings(config_file).log.level
    except ConfigError as exc:
        logger.warning("SIGHUP: configuration not read again; the log level stays", error=str(exc))
    if level is not None:
        log.set_level(level)
    logger.info(
        "SIGHUP received",
        read_again="key files, log.level",
        log_level=level,
        other_settings="apply at the next start",
    )
    changes.hangup.set()


def _connection_guard(settings: Settings, tls: ssl.SSLContext | None) -> ConnectionGuard:
    """Raise the open-file limit, then bound connections below it; ``tls`` for the listener."""
    limit = raise_open_file_limit()
    bound = connection_bound(settings.server.max_connections, limit.soft)
    logger.info(
        "open-file limit",
        limit=limit.soft,
        hard_limit=limit.hard,
        raised_from=limit.raised_from,
        max_connections=bound,
    )
    return ConnectionGuard(settings.server.read_timeout_s, bound, tls=tls)


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
