"""Connections: the open-file limit, read timeouts, a bound on open connections, and
protocol errors in Datadog's shape.

A client that trickles its request must not hold a file descriptor for ever, and many of
them must not lock runners out. So a request must arrive within ``read_timeout_s``: its head
from the first byte (or from the connection opening, for the first request), its body from
the end of the head. Between requests a keep-alive connection is left to aiohttp's
keep-alive timeout. Open connections are bounded below the open-file limit; a connection
arriving at the bound takes the place of the open one that has sent the fewest bytes.

With TLS, the handshake is part of the first request's head. asyncio's TLS server would hand
a connection to the HTTP protocol only once its handshake is done (and give a client 60 s
to do it), so the listener is a plain TCP one and each connection, watched from its accept,
does its own handshake (``loop.start_tls``): one deadline for handshake and head, the same
bound, the same drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo, _RequestFactory

from relay.errors import error_response

logger = structlog.get_logger(__name__)

# File descriptors kept for everything but runner connections: stdio, the event loop, the
# listener, the outbox's two SQLite connections (database, WAL, shared memory each), the
# upstream client's sockets and DNS look-ups, with room to spare.
RESERVED_FDS = 64
# A new connection has not had time to send anything: it is evicted for a newer one only
# when every open connection is as new.
ADMISSION_GRACE_S = 1.0
# Under a flood of slow clients, one summary line per interval rather than one per drop.
DROP_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class FileLimit:
    """The open-file limit the relay runs with, and the soft limit it started with."""

    soft: int
    hard: int
    raised_from: int


def raise_open_file_limit() -> FileLimit:
    """Raise the soft open-file limit to the hard limit, as nginx and Go programs do.

    A service manager or a container may start the relay with a soft limit of 256 or
    1024; every connection costs a descriptor, so the relay takes what it is allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logger.warning("cannot raise the open-file limit", limit=soft, error=str(exc))
            return FileLimit(soft, hard, soft)
        return FileLimit(target, hard, soft)
    return FileLimit(soft, hard, soft)


def connection_bound(max_connections: int, open_files: int) -> int:
    """The most connections kept open: the setting, capped below the open-file limit."""
    return max(1, min(max_connections, open_files - RESERVED_FDS))


class ConnectionGuard:
    """Enforces the read timeout and the connection bound, and logs what it drops.

    With ``tls``, connections start with a TLS handshake under the same watch.
    """

    def __init__(
        self,
        read_timeout_s: float = 30.0,
        max_connections: int = 1024,
        admission_grace_s: float = ADMISSION_GRACE_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.admission_grace_s = admission_grace_s
        self.tls = tls
        self._open: dict[Connection, None] = {}  # ordered by arrival
        self._dropped: Counter[str] = Counter()
        self._last_report = -math.inf
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start checking read deadlines in the background."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="connection-sweeper")

    async def stop(self) -> None:
        """Stop the background checks, close connections still in their TLS handshake, and
        report drops not yet logged."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        # aiohttp's shutdown closes the connections it knows, and it knows a TLS connection
        # only once its handshake is done; one still in it has no request to finish.
        for conn in [c for c in self._open if c.handshaking]:
            self.forget(conn)
            conn.force_close()
        self._report(math.inf)

    def admit(self, conn: Connection, now: float) -> None:
        """Make room for ``conn`` at the bound by dropping the connection that sent least."""
        if len(self._open) >= self.max_connections:
            self._drop(self._least_sent(now), "at_bound")
        self._open[conn] = None

    @property
    def connections(self) -> tuple[Connection, ...]:
        """The open connections, oldest first."""
        return tuple(self._open)

    def forget(self, conn: Connection) -> None:
        self._open.pop(conn, None)

    def sweep(self, now: float) -> None:
        """Close the connections whose request has not arrived in time."""
        late = [c for c in self._open if c.deadline is not None and c.deadline <= now]
        for conn in late:
            self._drop(conn, "read_timeout")
        self._report(now)

    def _least_sent(self, now: float) -> Connection:
        young = now - self.admission_grace_s
        # Connections younger than the grace go last: they have not had time to send.
        # Among equals min() keeps the first, the oldest, which had the longest to send more.
        return min(self._open, key=lambda c: (c.opened_at > young, c.bytes_received))

    def _drop(self, conn: Connection, reason: str) -> None:
        self._open.pop(conn, None)
        self._dropped[reason] += 1
        conn.force_close()

    def _report(self, now: float) -> None:
        if not self._dropped or now - self._last_report < DROP_LOG_INTERVAL_S:
            return
        self._last_report = now
        logger.warning(
            "connections dropped",
            read_timeout=self._dropped["read_timeout"],
            at_bound=self._dropped["at_bound"],
            open=len(self._open),
            max_connections=self.max_connections,
            read_timeout_s=self.read_timeout_s,
        )
        self._dropped.clear()

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(1.0, self.read_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep(loop.time())


class Connection(RequestHandler):
    """aiohttp's HTTP protocol, with the bytes it received and the deadline of its request."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = manager.guard
        self.opened_at = 0.0
        self.bytes_received = 0
        # When the request being received must be complete; None between requests.
        self.deadline: float | None = None
        self._body: StreamReader | None = None  # the body being received
        # With TLS, until aiohttp's protocol is told of the connection: the TCP transport,
        # the task doing the handshake, and the bytes that arrived meanwhile.
        self._established = False
        self._tcp: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []

    @property
    def handshaking(self) -> bool:
        """True while the connection's TLS handshake is not done."""
        return self._tcp is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        now = self._loop.time()
        tls = self.guard.tls
        if tls is None:
            self._established = True
            super().connection_made(transport)
        else:
            self._start_handshake(cast(asyncio.Transport, transport), tls)
        self.opened_at = now
        # From the accept: with TLS, the handshake is part of the first request's head.
        self.deadline = now + self.guard.read_timeout_s
        self.guard.admit(self, now)

    def _start_handshake(self, transport: asyncio.Transport, tls: ssl.SSLContext) -> None:
        # asyncio's loop honours this; uvloop starts reading after connection_made all the
        # same, and what it reads before the handshake starts is kept for it (_take_over).
        transport.pause_reading()
        self._tcp = transport
        self._handshake = self._loop.create_task(self._serve_after_handshake(transport, tls))

    async def _serve_after_handshake(
        self, transport: asyncio.Transport, tls: ssl.SSLContext
    ) -> None:
        secure = None
        if not transport.is_closing():  # else dropped by the guard, or the client hung up
            secure = await self._take_over(transport, tls)
        self._tcp = None
        # None or closing: the handshake failed, or the guard closed the connection.
        if secure is None or secure.is_closing():
            self.guard.forget(self)
            return
        self._established = True
        super().connection_made(secure)
        decrypted, self._early = self._early, []
        for data in decrypted:  # read by the TLS layer as the handshake ended
            self.data_received(data)

    async def _take_over(
        self, transport: asyncio.Transport, tls: ssl.SSLContext
    ) -> asyncio.Transport | None:
        """The TLS transport once the handshake is done; None if it failed."""
        received, self._early = self._early, []
        # start_tls gives the transport to its TLS protocol before it first waits, and starts
        # that protocol with call_soon: this call, queued first, hands it the bytes read so
        # far first, and a protocol keeps what it receives before its start.
        self._loop.call_soon(_hand_over, transport, received)
        try:
            # The loop's own handshake timer only backs up the sweep, which closes the
            # connection at its deadline and counts the drop: it must not fire first.
            return await self._loop.start_tls(
                transport,
                self,
                tls,
                server_side=True,
                ssl_handshake_timeout=2 * self.guard.read_timeout_s,
            )
        except OSError:
            # Not TLS, or the client went away (ssl.SSLError is an OSError): the loop's own
            # TLS server drops these without a word too.
            return None

    def force_close(self) -> None:
        if self._tcp is not None:
            # In its TLS handshake aiohttp's protocol has no transport yet: close the TCP one.
            self._tcp.abort()
        super().force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.forget(self)
        if self._established:  # a failed handshake ends here too, without connection_made
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._established:
            # Before the handshake: TLS bytes (uvloop); after it, before aiohttp's protocol
            # is told: the first request, which the TLS layer read with the handshake's end.
            self._early.append(data)
            return
        self.bytes_received += len(data)
        if data and self.deadline is None and self._body is None:
            # The first byte of the next request on a keep-alive connection (aiohttp also
            # calls this with no data to parse what it buffered while paused).
            self.deadline = self._loop.time() + self.guard.read_timeout_s
        super().data_received(data)
        if self._body is not None and self._messages:
            self._fail_body_on_parse_error()

    def _fail_body_on_parse_error(self) -> None:
        # A malformed chunk after the head: aiohttp queues the error as a next request,
        # behind the handler that waits for this body, which would then wait for ever.
        error = self._messages[-1][0]
        if isinstance(error, _ErrInfo) and self._body is not None:
            body = self._body
            body.set_exception(RequestPayloadError(_one_line(error.message)))
            body.feed_eof()  # nothing more to read: aiohttp does not linger on it
            self.close()  # after this request's answer; the queued error is not answered

    def head_received(self, payload: StreamReader) -> None:
        """The head of a request is parsed: the body, if any, has its own deadline."""
        if payload.is_eof():
            self.deadline = None
            return
        self._body = payload
        self.deadline = self._loop.time() + self.guard.read_timeout_s
        payload.on_eof(self._body_received)
        if self._messages:  # the rest of the body was already refused by the parser
            self._fail_body_on_parse_error()

    def _body_received(self) -> None:
        self._body = None
        self.deadline = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Errors of aiohttp's protocol layer (a request it cannot parse) in Datadog's shape."""
        if request.writer.output_size > 0:
            # Part of a response is on the wire; aiohttp then closes the connection.
            raise ConnectionError("a response is already being sent")
        if status >= 500:
            logger.error("request failed", status=status, peer=request.remote, exc_info=exc)
            detail = "the relay failed to handle this request; see its log"
        else:
            detail = f"the request is not valid HTTP: {_describe(exc, message)}"
            logger.info("request refused", status=status, reason=detail, peer=request.remote)
        response = error_response(status, detail)
        response.force_close()
        return response


def _describe(exc: BaseException | None, message: str | None) -> str:
    if isinstance(exc, LineTooLong):
        # aiohttp's message quotes the first 100 bytes of the line; the limit says enough.
        return f"a request line or header is longer than {exc.args[1]} bytes"
    return _one_line(message or str(exc))


def _one_line(message: str) -> str:
    """aiohttp's parser messages span lines to point at the bad byte; keep the first."""
    first = message.strip().splitlines()[0] if message.strip() else "unparsable request"
    return first.rstrip(":").strip()


@runtime_checkable
class _Buffered(Protocol):
    """The receiving side of a buffered protocol, as asyncio's and uvloop's TLS layers are."""

    def get_buffer(self, sizehint: int) -> Any: ...

    def buffer_updated(self, nbytes: int) -> None: ...


def _hand_over(transport: asyncio.Transport, received: list[bytes]) -> None:
    """Give the protocol now reading ``transport`` (the TLS layer) the bytes read before it."""
    if transport.is_closing() or not received:
        return
    protocol = transport.get_protocol()
    pending = memoryview(b"".join(received))
    if not isinstance(protocol, _Buffered):
        cast(asyncio.Protocol, protocol).data_received(bytes(pending))
        return
    while pending:
        buffer = memoryview(protocol.get_buffer(len(pending)))
        size = min(len(buffer), len(pending))
        buffer[:size] = pending[:size]
        protocol.buffer_updated(size)
        pending = pending[size:]


class GuardedServer(web.Server):
    """aiohttp's low-level server, making ``Connection`` protocols watched by ``guard``."""

    def __init__(
        self,
        guard: ConnectionGuard,
        handler: Any,
        request_factory: _RequestFactory,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._guarded_request, **kwargs)
        self.guard = guard
        self._app_request_factory = request_factory
        self._handler_kwargs = kwargs

    def _guarded_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        request = self._app_request_factory(message, payload, protocol, writer, task)
        if isinstance(protocol, Connection):
            protocol.head_received(payload)
        return request

    def __call__(self) -> Connection:
        return Connection(self, **self._handler_kwargs)


class RelayRunner(web.AppRunner):
    """An AppRunner whose connections are watched by a ``ConnectionGuard``."""

    def __init__(
        self,
        app: web.Application,
        guard: ConnectionGuard,
        shutdown_timeout: float = 60.0,
        **handler_kwargs: Any,
    ) -> None:
        # shutdown_timeout: how long cleanup() lets requests in progress finish.
        super().__init__(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **handler_kwargs
        )
        self.guard = guard
        self._handler_kwargs = handler_kwargs

    async def setup(self) -> None:
        await super().setup()
        self.guard.start()

    async def cleanup(self) -> None:
        # The guard keeps dropping slow clients while requests in progress finish.
        await super().cleanup()
        await self.guard.stop()

    async def _make_server(self) -> web.Server:
        # AppRunner starts the application and builds aiohttp's server; the same handler
        # and request factory then go to a server that makes guarded connections.
        server = await super()._make_server()
        return GuardedServer(
            self.guard,
            server.request_handler,
            server.request_factory,
            loop=asyncio.get_running_loop(),
            **self._handler_kwargs,
        )
