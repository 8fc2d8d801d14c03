"""A stand-in for Datadog's CI Visibility intake, served over loopback for delivery tests.

`FakeIntake` is a real aiohttp application listening on 127.0.0.1 on a free port. It serves
`POST /api/v2/ci/pipeline`, records every request it gets as a `Received`, and answers each
one as the test tells it to: a queue of one-shot answers first, then a default answer.

The answers are small frozen dataclasses, one per way the intake can respond:

- `Accept`: 202 with `{}` (or 400 when the body is not a `{"data": ...}` JSON payload).
- `Status`: any status with a Datadog error body `{"errors": [{"status", "title", "detail"}]}`.
- `RejectEvents`: 400 when any event in the batch matches a predicate, else as `Accept`.
- `TooLarge`: 413 when the decoded body is longer than a limit, else as `Accept`.
- `RateLimited`: 429 with `Retry-After` and the `X-RateLimit-*` headers Datadog sends.
- `Slow`: waits, then answers as another answer.
- `Drop`: closes the connection without any HTTP answer.
- `Flaky`: answers a failure with a fixed-seed probability, else as `Accept`.
- `FailWhen`: answers a failure when any event of the batch matches a predicate, else 202.
- `Raw`: any status with the exact body and headers given (a redirect, a gzip error body).
"""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self, TypeAlias

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

PIPELINE_PATH = "/api/v2/ci/pipeline"
"""The only path the intake serves; the relay appends it to `FakeIntake.url`."""

_MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""aiohttp's own request size limit, set far above any `TooLarge` a test would choose."""


@dataclass(frozen=True)
class Received:
    """One request the intake received."""

    path: str
    """The request path, e.g. `/api/v2/ci/pipeline`."""
    headers: Mapping[str, str]
    """A case-insensitive, read-only copy of the request headers."""
    raw: bytes
    """The body as it came over the wire (still gzip- or deflate-encoded, if it was)."""
    body: bytes
    """The body after undoing `Content-Encoding` (equal to `raw` when it could not be undone)."""
    events: list[dict[str, Any]]
    """The events under `data` (a single object there counts as one); empty if unparseable."""
    answered: int
    """The HTTP status the intake answered; 0 when no answer reached the client."""


@dataclass(frozen=True)
class Accept:
    """Answer 202 with `{}`, as the intake does for a well-formed payload."""


@dataclass(frozen=True)
class Status:
    """Answer `status` with `headers` and a Datadog error body carrying `detail`."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    detail: str = "answered by the fake intake"

    def __post_init__(self) -> None:
        """Refuse statuses an HTTP server cannot send as a final answer."""
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, got {self.status}")


@dataclass(frozen=True)
class RejectEvents:
    """Answer 400 naming every event that matches `predicate`; when none does, as `Accept`."""

    predicate: Callable[[dict[str, Any]], bool]
    detail_prefix: str = "invalid event"


@dataclass(frozen=True)
class TooLarge:
    """Answer 413 when the decoded body is longer than `max_bytes`; otherwise as `Accept`."""

    max_bytes: int

    def __post_init__(self) -> None:
        """Refuse a negative limit."""
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {self.max_bytes}")


@dataclass(frozen=True)
class RateLimited:
    """Answer 429 with `Retry-After` and `X-RateLimit-*` headers; None leaves a header out."""

    retry_after: str | None = "1"
    reset: str | None = None
    limit: str = "100"
    remaining: str = "0"
    period: str = "60"


@dataclass(frozen=True)
class Slow:
    """Wait `delay_s` seconds, then answer as `then`."""

    delay_s: float
    then: Answer = field(default_factory=Accept)

    def __post_init__(self) -> None:
        """Refuse a negative delay."""
        if self.delay_s < 0:
            raise ValueError(f"delay_s must not be negative, got {self.delay_s}")


@dataclass(frozen=True)
class Drop:
    """Close the connection without sending any HTTP answer."""


@dataclass(frozen=True)
class Flaky:
    """Answer as `failure` with probability `rate` (drawn from `random.Random(seed)`), else 202.

    The random sequence belongs to this instance: two intakes given equal `Flaky` answers
    fail on the same requests, while one instance shared by two intakes is drawn from by both.
    """

    rate: float
    seed: int
    failure: Answer = field(default_factory=lambda: Status(503))
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check `rate` and seed this answer's own random sequence."""
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, got {self.rate}")
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def fails(self) -> bool:
        """Draw whether the next request gets `failure`."""
        return self._rng.random() < self.rate


@dataclass(frozen=True)
class FailWhen:
    """Answer as `failure` when any event in the batch matches `predicate`, else as `Accept`.

    A poison event: the intake fails every request that carries it and takes the others.
    """

    predicate: Callable[[dict[str, Any]], bool]
    failure: Answer = field(default_factory=lambda: Status(500))


@dataclass(frozen=True)
class Raw:
    """Answer `status` with exactly `body` and `headers` (e.g. `Content-Encoding: gzip`)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Answer: TypeAlias = (
    Accept | Status | RejectEvents | TooLarge | RateLimited | Slow | Drop | Flaky | FailWhen | Raw
)
"""Every way the intake can respond to a request."""


@dataclass(frozen=True)
class _Reply:
    """What the handler does for one request: wait, then send a status, or drop (status 0)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


_DROP = _Reply(status=0)


def _error_reply(
    status: int, details: list[str], headers: Mapping[str, str] | None = None
) -> _Reply:
    """A reply with Datadog's error body: one `errors` entry per detail."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = ""
    errors = [{"status": str(status), "title": title, "detail": d} for d in details]
    return _Reply(status=status, body=orjson.dumps({"errors": errors}), headers=headers or {})


def _accept(events: list[dict[str, Any]] | None) -> _Reply:
    """202 for a well-formed payload, 400 for a body that is not one."""
    if events is None:
        return _error_reply(400, ['malformed payload: expected a JSON object with "data"'])
    return _Reply(status=202, body=b"{}")


def _event_name(index: int, event: dict[str, Any]) -> str:
    """How an error detail names an event: its index plus its resource unique_id or id."""
    attributes = event.get("attributes")
    resource = attributes.get("resource") if isinstance(attributes, dict) else None
    if isinstance(resource, dict):
        for key in ("unique_id", "id"):
            if key in resource:
                return f"data[{index}] ({key}={resource[key]})"
    return f"data[{index}]"


def _resolve(answer: Answer, body: bytes, events: list[dict[str, Any]] | None) -> _Reply:
    """Turn an answer into the reply for one request with this decoded body and these events."""
    match answer:
        case Accept():
            return _accept(events)
        case Status(status=status, headers=headers, detail=detail):
            if status < 300:
                return _Reply(status=status, body=b"{}", headers=headers)
            return _error_reply(status, [detail], headers)
        case RejectEvents(predicate=predicate, detail_prefix=prefix):
            if events is None:
                return _accept(events)
            bad = [_event_name(i, e) for i, e in enumerate(events) if predicate(e)]
            if bad:
                return _error_reply(400, [f"{prefix}: {name}" for name in bad])
            return _accept(events)
        case TooLarge(max_bytes=max_bytes):
            if len(body) > max_bytes:
                detail = f"payload of {len(body)} bytes exceeds the limit of {max_bytes} bytes"
                return _error_reply(413, [detail])
            return _accept(events)
        case RateLimited():
            named = {
                "Retry-After": answer.retry_after,
                "X-RateLimit-Limit": answer.limit,
                "X-RateLimit-Period": answer.period,
                "X-RateLimit-Remaining": answer.remaining,
                "X-RateLimit-Reset": answer.reset,
            }
            headers = {k: v for k, v in named.items() if v is not None}
            return _error_reply(429, ["rate limit exceeded"], headers)
        case Slow(delay_s=delay_s, then=then):
            inner = _resolve(then, body, events)
            return replace(inner, delay_s=inner.delay_s + delay_s)
        case Drop():
            return _DROP
        case Flaky(failure=failure):
            return _resolve(failure, body, events) if answer.fails() else _accept(events)
        case FailWhen(predicate=predicate, failure=failure):
            if events is not None and any(predicate(e) for e in events):
                return _resolve(failure, body, events)
            return _accept(events)
        case Raw(status=status, body=raw_body, headers=headers):
            return _Reply(status=status, body=raw_body, headers=headers)


def _response(reply: _Reply) -> web.Response:
    """The aiohttp response for a reply that is sent (status is not 0)."""
    headers = CIMultiDict(reply.headers)
    headers.setdefault("Content-Type", "application/json")
    return web.Response(status=reply.status, body=reply.body, headers=headers)


def _decode(raw: bytes, content_encoding: str) -> bytes | None:
    """Undo a `Content-Encoding` of gzip, deflate or identity; None if it cannot be undone."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    data = raw
    try:
        for coding in reversed(codings):
            if coding in ("gzip", "x-gzip"):
                data = gzip.decompress(data)
            elif coding == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, wbits=-zlib.MAX_WBITS)  # raw deflate
            elif coding != "identity":
                return None
    except (OSError, EOFError, zlib.error):
        return None
    return data


def _parse_events(body: bytes) -> list[dict[str, Any]] | None:
    """The events under `data` (a list of objects or one object); None if the body has none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "data" not in payload:
        return None
    data = payload["data"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        return None
    return items


class FakeIntake:
    """Datadog's CI pipeline intake, served on 127.0.0.1 for the relay's delivery tests."""

    def __init__(self, default: Answer = Accept()) -> None:
        """Prepare an intake that answers `default` whenever its queue is empty."""
        self.default: Answer = default
        """The answer for a request when the queue is empty."""
        self.received: list[Received] = []
        """Every request, including failed and dropped ones, in the order they were answered."""
        self.arrived = 0
        """How many pipeline requests have arrived, answered or not yet (a `Slow` one)."""
        self._queue: deque[Answer] = deque()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._changed: asyncio.Condition | None = None
        self._closing: asyncio.Event | None = None

    async def start(self) -> None:
        """Start serving on 127.0.0.1 on a free port."""
        if self._runner is not None:
            raise RuntimeError("the fake intake is already started")
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        app.router.add_post(PIPELINE_PATH, self._handle_pipeline)
        app.router.add_route("*", "/{tail:.*}", self._handle_other)
        # auto_decompress=False keeps the body as it came over the wire; _decode undoes it.
        runner = web.AppRunner(app, auto_decompress=False, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop serving; requests still being delayed by `Slow` are dropped."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        """Start the intake."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the intake."""
        await self.close()

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:41234`, without the pipeline path."""
        if self._url is None:
            raise RuntimeError("the fake intake is not started")
        return self._url

    def queue(self, *answers: Answer) -> None:
        """Add one-shot answers, used in order, one per request, before falling back to default."""
        self._queue.extend(answers)

    @property
    def accepted_events(self) -> list[dict[str, Any]]:
        """The events of every request answered 2xx, in the order they were answered."""
        return [e for r in self.received if 200 <= r.answered < 300 for e in r.events]

    async def wait_for_events(self, n: int, timeout_s: float) -> None:
        """Return once `accepted_events` holds at least `n` events; TimeoutError after timeout_s."""
        await self._wait_until(lambda: len(self.accepted_events), n, "accepted events", timeout_s)

    async def wait_for_arrivals(self, n: int, timeout_s: float) -> None:
        """Return once `n` pipeline requests have arrived, before any is answered."""
        await self._wait_until(lambda: self.arrived, n, "arrived requests", timeout_s)

    async def wait_for_requests(self, n: int, timeout_s: float) -> None:
        """Return once `received` holds at least `n` requests; TimeoutError after timeout_s."""
        await self._wait_until(lambda: len(self.received), n, "requests", timeout_s)

    async def _wait_until(
        self, count: Callable[[], int], n: int, what: str, timeout_s: float
    ) -> None:
        if self._changed is None:
            raise RuntimeError("the fake intake is not started")
        changed = self._changed
        try:
            async with asyncio.timeout(timeout_s), changed:
                await changed.wait_for(lambda: count() >= n)
        except TimeoutError:
            raise TimeoutError(
                f"the fake intake had {count()} of {n} {what} within {timeout_s} s"
            ) from None

    async def _record(self, received: Received) -> None:
        """Append a request to `received` and wake `wait_for_events`."""
        self.received.append(received)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _delay(self, delay_s: float) -> bool:
        """Wait `delay_s` seconds; True if the intake started closing first."""
        assert self._closing is not None
        try:
            async with asyncio.timeout(delay_s):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    async def _handle_pipeline(self, request: web.Request) -> web.StreamResponse:
        """Record one pipeline request and answer it as the queue or default says."""
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            await self._record(Received(request.path, headers, b"", b"", [], 413))
            raise
        except ConnectionError:
            # The client went away while sending the body: nothing can be answered.
            await self._record(Received(request.path, headers, b"", b"", [], 0))
            return web.Response(status=499, reason="Client Closed Request")
        self.arrived += 1
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        decoded = _decode(raw, request.headers.get("Content-Encoding", ""))
        events = None if decoded is None else _parse_events(decoded)
        body = raw if decoded is None else decoded
        answer = self._queue.popleft() if self._queue else self.default
        reply = _resolve(answer, body, events)
        if reply.delay_s > 0 and await self._delay(reply.delay_s):
            reply = _DROP
        transport = request.transport
        if transport is None or transport.is_closing():
            reply = _DROP  # the client hung up (e.g. timed out) before the answer was ready
        await self._record(Received(request.path, headers, raw, body, events or [], reply.status))
        if reply.status == 0:
            if transport is not None:
                transport.close()
            # Never sent: aiohttp fails to write it to the closed transport and ignores that
            # quietly. 499 ("client closed request") only shows up in the access log.
            return web.Response(status=499, reason="Dropped By Fake Intake")
        return _response(reply)

    async def _handle_other(self, request: web.Request) -> web.StreamResponse:
        """Record a request for any other path or method and answer 404 or 405."""
        raw = await request.read()
        status = 405 if request.path == PIPELINE_PATH else 404
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        await self._record(Received(request.path, headers, raw, raw, [], status))
        detail = f"{request.method} {request.path} is not served by the fake intake"
        allow = {"Allow": "POST"} if status == 405 else None
        return _response(_error_reply(status, [detail], allow))
