"""A stand-in for Datadog's CI Visibility intake, served over loopback for delivery tests.

`FakeIntake` is a real aiohttp application on 127.0.0.1 on a free port. It serves
`POST /api/v2/ci/pipeline`, records every request as a `Received`, and answers each with an
`Answer`: any callable from the `Received` request to a `Reply`. One-shot answers queued with
`queue()` come first, then `default`. Given an SSL context, it serves over TLS.

The named answers are small frozen values: `Accept`, `Status`, `Raw`, `RateLimited`, `Drop`,
`RejectEvents` and `TooLarge` answer on their own; `Slow`, `FailWhen`, `Flaky` and
`RequireKey` (403 unless the request carries one API key) wrap another answer, so they
compose (`Slow(60, then=FailWhen(poison, RateLimited()))`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Self, TypeAlias

import orjson
from aiohttp import web
from multidict import CIMultiDict

PIPELINE_PATH = "/api/v2/ci/pipeline"
"""The only path the intake serves; the relay appends it to `FakeIntake.url`."""

_TITLES = {status.value: status.phrase for status in HTTPStatus}
_RATE_HEADERS = (
    "Retry-After",
    *(f"X-RateLimit-{n}" for n in ("Reset", "Limit", "Remaining", "Period")),
)
_WBITS = {"gzip": (31,), "x-gzip": (31,), "deflate": (15, -15)}  # deflate: zlib, then raw


@dataclass(frozen=True)
class Received:
    """One request the intake received, and the status it answered (0: none reached the client)."""

    path: str
    headers: Mapping[str, str]  # case-insensitive and read-only
    raw: bytes  # as it came over the wire, still gzip- or deflate-encoded if it was
    body: bytes  # after undoing Content-Encoding; `raw` when that could not be done
    events: list[dict[str, Any]]  # under `data` (one object there counts as one); [] if malformed
    well_formed: bool  # a JSON object whose `data` holds objects
    answered: int = 0


@dataclass(frozen=True)
class Reply:
    """Wait `delay_s`, then send `status`, `body` and `headers`; status 0 drops the connection."""

    status: int
    body: bytes = b"{}"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Answer: TypeAlias = Callable[[Received], Reply]
"""How the intake answers one request."""


def error(status: int, *details: str, headers: Mapping[str, str] | None = None) -> Reply:
    """A reply with Datadog's error body: one `errors` entry per detail."""
    title = _TITLES.get(status, "")
    errors = [{"status": str(status), "title": title, "detail": d} for d in details]
    return Reply(status, orjson.dumps({"errors": errors}), headers or {})


@dataclass(frozen=True)
class Accept:
    """202 `{}` for a well-formed payload, 400 for a body that is not one."""

    def __call__(self, request: Received) -> Reply:
        if request.well_formed:
            return Reply(202)
        return error(400, 'malformed payload: expected a JSON object with "data"')


@dataclass(frozen=True)
class Status:
    """`status` with `headers` and Datadog's error body carrying `detail` (`{}` below 300)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    detail: str = "answered by the fake intake"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, got {self.status}")

    def __call__(self, request: Received) -> Reply:
        if self.status < 300:
            return Reply(self.status, headers=self.headers)
        return error(self.status, self.detail, headers=self.headers)


@dataclass(frozen=True)
class Raw:
    """`status` with exactly `body` and `headers` (a redirect, a gzip error body)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, request: Received) -> Reply:
        return Reply(self.status, self.body, self.headers)


@dataclass(frozen=True)
class RateLimited:
    """429 with `Retry-After` and the `X-RateLimit-*` headers Datadog sends; None leaves one out."""

    retry_after: str | None = "1"
    reset: str | None = None
    limit: str = "100"
    remaining: str = "0"
    period: str = "60"

    def __call__(self, request: Received) -> Reply:
        values = (self.retry_after, self.reset, self.limit, self.remaining, self.period)
        headers = {k: v for k, v in zip(_RATE_HEADERS, values, strict=True) if v is not None}
        return error(429, "rate limit exceeded", headers=headers)


@dataclass(frozen=True)
class Drop:
    """Close the connection without sending any HTTP answer."""

    def __call__(self, request: Received) -> Reply:
        return Reply(0)


def _event_name(index: int, event: dict[str, Any]) -> str:
    """How an error detail names an event: its index plus its resource unique_id or id."""
    attributes = event.get("attributes")
    resource = attributes.get("resource") if isinstance(attributes, dict) else None
    if not isinstance(resource, dict):
        return f"data[{index}]"
    key = next((k for k in ("unique_id", "id") if k in resource), None)
    return f"data[{index}]" if key is None else f"data[{index}] ({key}={resource[key]})"


@dataclass(frozen=True)
class RejectEvents:
    """400 naming every event that matches `predicate`; when none does, as `Accept`."""

    predicate: Callable[[dict[str, Any]], bool]
    detail_prefix: str = "invalid event"

    def __call__(self, request: Received) -> Reply:
        bad = [_event_name(i, e) for i, e in enumerate(request.events) if self.predicate(e)]
        if bad:
            return error(400, *(f"{self.detail_prefix}: {name}" for name in bad))
        return Accept()(request)


@dataclass(frozen=True)
class TooLarge:
    """413 when the decoded body is longer than `max_bytes`; otherwise as `Accept`."""

    max_bytes: int

    def __call__(self, request: Received) -> Reply:
        size = len(request.body)
        if size > self.max_bytes:
            return error(
                413, f"payload of {size} bytes exceeds the limit of {self.max_bytes} bytes"
            )
        return Accept()(request)


@dataclass(frozen=True)
class Slow:
    """Wait `delay_s` seconds, then answer as `then`."""

    delay_s: float
    then: Answer = field(default_factory=Accept)

    def __call__(self, request: Received) -> Reply:
        reply = self.then(request)
        return replace(reply, delay_s=reply.delay_s + self.delay_s)


@dataclass(frozen=True)
class FailWhen:
    """As `failure` when any event of the batch matches `predicate` (a poison event), else 202."""

    predicate: Callable[[dict[str, Any]], bool]
    failure: Answer = field(default_factory=lambda: Status(500))

    def __call__(self, request: Received) -> Reply:
        if any(self.predicate(e) for e in request.events):
            return self.failure(request)
        return Accept()(request)


@dataclass(frozen=True)
class Flaky:
    """As `failure` with probability `rate`, drawn from this answer's own `Random(seed)`; else 202.

    Two equal `Flaky` values fail on the same requests; one value shared is drawn from by all.
    """

    rate: float
    seed: int
    failure: Answer = field(default_factory=lambda: Status(503))
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def __call__(self, request: Received) -> Reply:
        if self._rng.random() < self.rate:
            return self.failure(request)
        return Accept()(request)


@dataclass(frozen=True)
class RequireKey:
    """403 in Datadog's shape unless `DD-API-KEY` is `key`; then as `then`."""

    key: str
    then: Answer = field(default_factory=Accept)

    def __call__(self, request: Received) -> Reply:
        given = request.headers.get("DD-API-KEY", "").encode()
        if not hmac.compare_digest(given, self.key.encode()):
            return error(403, "Forbidden")
        return self.then(request)


def _decode(raw: bytes, coding: str) -> bytes | None:
    """Undo a `Content-Encoding` of gzip, deflate or identity; None if it cannot be undone."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return raw
    for wbits in _WBITS.get(coding, ()):
        with contextlib.suppress(zlib.error):
            return zlib.decompress(raw, wbits)
    return None


def _events(body: bytes) -> list[dict[str, Any]] | None:
    """The events under `data` (a list of objects or one object); None if the body has none."""
    try:
        data = orjson.loads(body)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    items = data if isinstance(data, list) else [data]
    return items if all(isinstance(item, dict) for item in items) else None


class FakeIntake:
    """Datadog's CI pipeline intake on 127.0.0.1, served while used as `async with`."""

    def __init__(
        self, default: Answer = Accept(), ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.default = default
        self._ssl_context = ssl_context  # TLS when given; `url` is then https
        """The answer for a request when the queue is empty."""
        self.received: list[Received] = []
        """Every request, dropped ones included, in the order they were answered."""
        self.arrived = 0
        """How many requests have arrived, answered or not yet (a `Slow` one)."""
        self._queue: deque[Answer] = deque()
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""
        """The base URL once started, e.g. `http://127.0.0.1:41234`, without the pipeline path."""

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post(PIPELINE_PATH, self._handle)
        # auto_decompress=False keeps the body as it came over the wire; _decode undoes it.
        self._runner = web.AppRunner(app, auto_decompress=False, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl_context).start()
        host, port = self._runner.addresses[0][:2]
        scheme = "http" if self._ssl_context is None else "https"
        self.url = f"{scheme}://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()  # requests still delayed by `Slow` are dropped, not waited out
        if self._runner is not None:
            await self._runner.cleanup()

    def queue(self, *answers: Answer) -> None:
        """Add one-shot answers, used in order, one per request, before falling back to default."""
        self._queue.extend(answers)

    @property
    def accepted_events(self) -> list[dict[str, Any]]:
        """The events of every request answered 2xx, in the order they were answered."""
        return [e for r in self.received if 200 <= r.answered < 300 for e in r.events]

    async def wait_for_events(self, n: int, timeout_s: float) -> None:
        """Return once `accepted_events` holds at least `n` events; TimeoutError after timeout_s."""
        await self._wait(lambda: len(self.accepted_events), n, "accepted events", timeout_s)

    async def wait_for_requests(self, n: int, timeout_s: float) -> None:
        """Return once `received` holds at least `n` requests; TimeoutError after timeout_s."""
        await self._wait(lambda: len(self.received), n, "requests", timeout_s)

    async def wait_for_arrivals(self, n: int, timeout_s: float) -> None:
        """Return once `n` requests have arrived, before any is answered."""
        await self._wait(lambda: self.arrived, n, "arrived requests", timeout_s)

    async def _wait(self, count: Callable[[], int], n: int, what: str, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: count() >= n)
        except TimeoutError:
            raise TimeoutError(
                f"the fake intake had {count()} of {n} {what} within {timeout_s} s"
            ) from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _closed_within(self, delay_s: float) -> bool:
        """Wait `delay_s` seconds; True if the intake started closing first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._closing.wait()
                return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Record one pipeline request and answer it as the queue or default says."""
        try:
            raw = await request.read()
        except ConnectionError:  # the client went away while sending: nothing to answer
            return web.Response(status=499)
        self.arrived += 1
        await self._notify()
        body = _decode(raw, request.headers.get("Content-Encoding", ""))
        events = None if body is None else _events(body)
        decoded = raw if body is None else body
        got = Received(
            request.path, request.headers, raw, decoded, events or [], events is not None
        )
        reply = (self._queue.popleft() if self._queue else self.default)(got)
        if reply.delay_s > 0 and await self._closed_within(reply.delay_s):
            reply = Reply(0)
        transport = request.transport
        if transport is None or transport.is_closing():
            reply = Reply(0)  # the client hung up (e.g. timed out) before the answer was ready
        self.received.append(replace(got, answered=reply.status))
        await self._notify()
        if reply.status == 0:
            if transport is not None:
                transport.close()
            # Never sent: aiohttp fails quietly to write to the closed transport.
            return web.Response(status=499)
        headers = CIMultiDict(reply.headers)
        headers.setdefault("Content-Type", "application/json")
        return web.Response(status=reply.status, body=reply.body, headers=headers)
