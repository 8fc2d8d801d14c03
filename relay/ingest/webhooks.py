"""CI servers' webhooks in: authenticated, mapped, deduplicated, committed, then answered.

``POST /webhooks/gitlab`` and ``POST /webhooks/github``. The answer tells the CI server
whether to send again: 2xx once what the delivery made is committed, and also when it
makes nothing the relay uses or was stored before; 401 for a wrong or missing secret;
400 for a body that is not JSON or not the kind its header says; 503 with Retry-After
when the outbox cannot take it. Authenticated content that cannot become a valid event
is kept as a dead letter (reason ``invalid``) and answered 2xx: a 4xx would only lead
GitLab to disable the hook, and sending it again would not make it valid.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web

from relay.contract.body import NotJSON, loads
from relay.contract.intake import MAX_ERROR_MESSAGE
from relay.contract.schema import InvalidRequest, validate_events
from relay.errors import error_response
from relay.ingest.admission import Busy
from relay.ingest.counts import WebhookCounts
from relay.ingest.reading import Refused, read_body
from relay.ingest.server import (
    MAX_BODY_BYTES,
    OUTBOX,
    PARSE_BUDGET,
    PARSE_INLINE_MAX_BYTES,
    RETRY_AFTER_S,
)
from relay.ingest.webhook_sources import SOURCES, Source, WebhookAnswer
from relay.keyfiles import KeyFile
from relay.store.once import Keyed, Stored
from relay.store.writer import OutboxClosed, OutboxFull, OutboxUnavailable
from relay.webhooks.mapped import Mapped, WrongKind, cut

logger = structlog.get_logger(__name__)

WEBHOOK_SECRETS = web.AppKey("webhook_secrets", dict[str, KeyFile])
WEBHOOK_COUNTS = web.AppKey("webhook_counts", WebhookCounts)
# How much of a payload that makes no event a dead letter keeps, for an operator to read.
UNUSABLE_EXCERPT_BYTES = 64 * 1024

_T = TypeVar("_T")
Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


class _Delivery:
    """One request to a webhook path: its source, kind, and the answer it gets."""

    def __init__(self, source: Source, request: web.Request) -> None:
        self.source = source
        self.request = request
        self.kind, self.kind_label = source.kind_of(request.headers)
        self.counts = request.app[WEBHOOK_COUNTS]

    def answer(self, status: int, answer: WebhookAnswer) -> web.Response:
        """A 2xx: what became of the delivery, which the CI server shows beside it."""
        self._count(answer["status"])
        logger.debug("webhook", source=self.source.name, kind=self.kind, **answer)
        body = orjson.dumps(answer)
        return web.Response(status=status, body=body, content_type="application/json")

    def refuse(
        self, outcome: str, status: int, *details: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        """A refusal in Datadog's error shape, counted and logged."""
        self._count(outcome)
        logger.info(
            "webhook refused",
            source=self.source.name,
            kind=self.kind,
            status=status,
            reason=details[0],
            peer=self.request.remote,
        )
        return error_response(status, *details, headers=headers)

    def _count(self, outcome: str) -> None:
        self.counts.deliveries[self.source.name, self.kind_label, outcome] += 1


def handler(source: Source) -> Handler:
    """The request handler of ``source``'s path."""

    async def receive(request: web.Request) -> web.StreamResponse:
        try:
            return await _receive(_Delivery(source, request))
        except Exception:
            # A bug must not leak a traceback to the CI server; the log keeps it.
            logger.exception("webhook failed", path=request.path)
            return error_response(500, "the relay failed to handle this webhook; see its log")

    return receive


async def _receive(delivery: _Delivery) -> web.StreamResponse:
    source, request = delivery.source, delivery.request
    secret = request.app[WEBHOOK_SECRETS][source.name].value
    if secret is None:
        return delivery.refuse(
            "not_configured",
            404,
            f"this relay takes no {source.title} webhooks: set {source.setting} or "
            f"{source.setting}_file ({source.environment_variable}), then restart it",
        )
    if not source.checks_body and (problem := source.check(request.headers, b"", secret)):
        return delivery.refuse("unauthorized", 401, problem)  # before reading any body
    try:
        body = await read_body(request, request.app[MAX_BODY_BYTES])
    except Refused as exc:
        return delivery.refuse("invalid", exc.status, *exc.details)
    except ConnectionError as exc:
        logger.info("client went away", path=request.path, peer=request.remote, error=str(exc))
        return web.Response(status=499, reason="Client Closed Request")
    if source.checks_body and (problem := source.check(request.headers, body, secret)):
        return delivery.refuse("unauthorized", 401, problem)
    return await _store(delivery, body)


async def _store(delivery: _Delivery, body: bytes) -> web.Response:
    """Map and validate ``body``, then commit what it makes (see the module docstring).

    A delivery stored before, and the objects of a delivery announced before, are looked up
    on the outbox's reader first, so that GitLab's many hooks per pipeline cost no mapping
    or validation twice; ``append_once`` checks again in its transaction, so a race between
    the look and the commit cannot store anything twice.
    """
    request, outbox = delivery.request, delivery.request.app[OUTBOX]
    retry = {"Retry-After": str(request.app[RETRY_AFTER_S])}
    budget = request.app[PARSE_BUDGET]
    key = delivery.source.delivery_key(request.headers, body)
    try:
        if await outbox.seen_webhook_keys([key]):
            return _stored(delivery, (), Stored(0, duplicate=True))
        await budget.acquire(len(body))
        try:
            maker = _Maker(delivery.source, delivery.kind, body)
            mapped = await _off_loop(maker.map, len(body))
            if mapped.ignored is not None:
                return delivery.answer(200, {"status": "ignored", "reason": mapped.ignored})
            seen = await outbox.seen_webhook_keys(mapped.keys)
            items = await _off_loop(partial(maker.items, mapped, seen), len(body))
            stored = await outbox.append_once(key, items)
        finally:
            budget.release(len(body))
    except _BadBody as exc:
        return delivery.refuse("invalid", 400, str(exc))
    except (OutboxFull, OutboxUnavailable, OutboxClosed, Busy) as exc:
        logger.warning("webhook refused with 503", source=delivery.source.name, reason=str(exc))
        return delivery.refuse(
            "unavailable", 503, f"the relay cannot store it now: {exc}", headers=retry
        )
    return _stored(delivery, items, stored)


async def _off_loop(work: Callable[[], _T], size: int) -> _T:
    """``work`` inline for a small body, in a worker thread for a large one (as ingest
    parses), so that the loop keeps answering through a large hook's mapping."""
    return work() if size <= PARSE_INLINE_MAX_BYTES else await asyncio.to_thread(work)


def _stored(delivery: _Delivery, items: Sequence[Keyed], stored: Stored) -> web.Response:
    source = delivery.source.name
    delivery.counts.events[source] += stored.events
    delivery.counts.dead_letters[source] += stored.dead_letters
    if stored.dead_letters:
        refused = [item.refused for item in items if item.refused is not None]
        # Once per delivery stored: the same content sent again makes no new dead letter.
        logger.warning(
            "webhook content kept as a dead letter: it cannot become a valid event",
            source=source,
            kind=delivery.kind,
            dead_letters=stored.dead_letters,
            reason=refused[0],
        )
    outcome, status = (
        ("stored", 202)
        if stored.events
        else ("dead_lettered", 202)
        if stored.dead_letters
        else ("duplicate", 200)
    )
    answer: WebhookAnswer = {
        "status": outcome,
        "events": stored.events,
        "dead_letters": stored.dead_letters,
    }
    return delivery.answer(status, answer)


class _BadBody(Exception):
    """The body is not JSON, or not the kind its header says: 400 with this reason."""


class _Maker:
    """``body`` to what it maps to, then to the items to store; each step callable inline
    or in a worker thread."""

    def __init__(self, source: Source, kind: str, body: bytes) -> None:
        self.source, self.kind, self.body = source, kind, body

    def map(self) -> Mapped:
        try:
            payload = loads(self.body)
        except NotJSON as exc:
            raise _BadBody(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _BadBody(f"a {self.source.title} webhook body is a JSON object")
        try:
            return self.source.map(self.kind, payload)
        except WrongKind as exc:
            raise _BadBody(str(exc)) from None

    def items(self, mapped: Mapped, seen: set[str]) -> tuple[Keyed, ...]:
        """The items to store: the events whose keys were not ``seen``, validated, or the
        unusable payload."""
        if mapped.unusable is not None:
            return (self._unusable(mapped.unusable),)
        fresh = [(e, k) for e, k in zip(mapped.events, mapped.keys, strict=True) if k not in seen]
        return tuple(_validated(fresh, f"{self.source.title} {self.kind}"))

    def _unusable(self, reason: str) -> Keyed:
        """The payload kept as it came, named by its digest; a long one as its start (a JSON
        string) and its size, so that what is kept is JSON still."""
        key = f"{self.source.name}:unusable:{hashlib.sha256(self.body).hexdigest()}"
        kept = self.body
        if len(kept) > UNUSABLE_EXCERPT_BYTES:
            start = kept[:UNUSABLE_EXCERPT_BYTES].decode("utf-8", "ignore")
            kept = orjson.dumps({"payload_start": start, "payload_bytes": len(self.body)})
        return Keyed(key, kept, None, reason)


def _validated(events: list[tuple[dict[str, Any], str]], what: str) -> list[Keyed]:
    """The mapped events with their keys, each validated as ingest validates it (the
    intake's window too); one the relay's validation refuses carries the reason, for the
    dead letters."""
    if not events:
        return []
    try:
        accepted = validate_events([event for event, _ in events])
    except InvalidRequest:
        return [_one(event, key, what) for event, key in events]
    return [
        Keyed(key, valid.body, valid.end_at)
        for (_, key), valid in zip(events, accepted, strict=True)
    ]


def _one(event: dict[str, Any], key: str, what: str) -> Keyed:
    try:
        (accepted,) = validate_events([event])
    except InvalidRequest as exc:
        reason = cut(f"{what}: the event it makes is not valid: {exc}", MAX_ERROR_MESSAGE)
        return Keyed(key, orjson.dumps(event), None, reason)
    return Keyed(key, accepted.body, accepted.end_at)


def configure(app: web.Application, secrets: dict[str, KeyFile] | None = None) -> None:
    """Give ``app`` the webhook secrets (a source without one answers 404) and counts, and
    route each source's path to its handler (before any catch-all route)."""
    app[WEBHOOK_SECRETS] = secrets or {}
    for source in SOURCES:
        app[WEBHOOK_SECRETS].setdefault(source.name, KeyFile(source.setting + "_file", None, None))
    # A secret read from a file never goes back to None, so what is served is fixed now.
    enabled = {name: secret.value is not None for name, secret in app[WEBHOOK_SECRETS].items()}
    app[WEBHOOK_COUNTS] = WebhookCounts(enabled=enabled)
    for source in SOURCES:
        app.router.add_post(source.path, handler(source))
