"""One step of delivery: what to send, and what each answer means for the events.

``Delivery.step()`` retries the held events that are due, sends the oldest batch and acts
on the outcome: ack, dead-letter, bisect on 400 and 413, isolate a batch that keeps
failing (``relay.delivery.isolation``), or stop at a condition that needs a wait. It returns
a ``FlushResult`` of what it did; the flusher (``relay.delivery.flusher``) decides what the
condition means for its state and how long to wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from relay.config import FlusherSettings, RetrySettings
from relay.contract.intake import WINDOW_REFUSAL, WINDOW_S, WINDOW_TEXT, request_body
from relay.delivery.backoff import Backoff
from relay.delivery.isolation import HeadFailures, HeldEvent, IsolationPass, RejectStreak
from relay.delivery.upstream import (
    Delivered,
    Misconfigured,
    Outcome,
    Reject,
    Retry,
    Split,
    Unauthorized,
    Upstream,
)
from relay.store.outbox import Batch, Outbox, StoredEvent
from relay.store.writer import OutboxUnavailable

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StoreFailed:
    """The outbox could not be read or written (disk full, locked, I/O error)."""

    detail: str


@dataclass(frozen=True)
class StepFailed:
    """The step raised an exception that no answer or store condition explains: a fault in
    the relay, or a stored row it cannot handle. The events stay; the flusher backs off."""

    error: Exception = field(compare=False)

    @property
    def detail(self) -> str:
        """The exception's type and message, in one line of at most 500 characters."""
        text = " ".join(f"{type(self.error).__name__}: {self.error}".split())
        return text[:500]


Blocker = Retry | Unauthorized | Misconfigured | Reject | StoreFailed | StepFailed


@dataclass
class FlushResult:
    """What one step did (events delivered and dead-lettered, requests sent and failed),
    what stopped it, if anything, and how long the flusher waits.

    The running totals of delivered and dead-lettered events are the outbox's
    (``OutboxCounts``), counted as their removal commits; these serve the step's verdict.
    """

    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    failed_requests: int = 0
    blocked_by: Blocker | None = None
    wait_s: float = 0.0


class Delivery:
    """Sends the outbox's events upstream, one request at a time; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        upstream: Upstream,
        settings: FlusherSettings,
        retry: RetrySettings,
        backoff: Backoff,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``backoff`` is the flusher's (one policy, made from ``retry``): here it spaces a
        held event's retries."""
        self._outbox = outbox
        self._upstream = upstream
        self._settings = settings
        self._retry = retry
        self._backoff = backoff
        self._clock = clock
        self._head = HeadFailures()
        self._held: dict[int, HeldEvent] = {}
        self._rejects = RejectStreak()
        self._deliveries = 0
        # The batch after the last one delivered, read while that one was sent and acked,
        # with the held ids it leaves out; used by the next step if they still hold.
        self._next: tuple[Batch, frozenset[int]] | None = None
        # The ack of the batch delivered last, left committing by a step asked to overlap
        # it with the next send; met (``settle``) before anything else reads or writes.
        self._acking: asyncio.Future[None] | None = None
        # The last ack met failed: until one succeeds, each step meets its own ack, so that
        # a failing store is reported by the step that met it, not by the one after.
        self._ack_failed = False

    @property
    def held(self) -> Sequence[int]:
        """The ids of the events held aside as suspected poison, retried on their own."""
        return list(self._held)

    def next_held_at(self) -> float | None:
        """When the first held event is due again; None when none is held."""
        return min((h.next_at for h in self._held.values()), default=None)

    async def step(self, *, overlap: bool = False) -> FlushResult:
        """Retry the held events that are due, then send the oldest batch and act on it.

        With ``overlap`` the ack of a delivered batch may still be committing on return:
        the next step sends the batch read ahead meanwhile, then meets that ack before it
        acts on its own answer. Without, every write of the step is done on return.
        """
        tally = FlushResult()
        prefetched, self._next = self._next, None
        try:
            request = None if self._held_due() else self._still_next(prefetched)
            if request is None:
                await self.settle()
                await self._retry_held(tally)
                if tally.blocked_by is None:
                    request = self._still_next(prefetched) or await self._outbox.next_request(
                        self._settings.batch_max_events, self._settings.batch_max_bytes, self._held
                    )
            if request is not None:
                await self._deliver_request(request, tally)
            if not overlap:
                await self.settle()
        except OutboxUnavailable as exc:
            if not exc.transient:
                raise  # a damaged file: no retry mends it, the daemon stops and says why
            tally.blocked_by = StoreFailed(str(exc))
        except Exception as exc:
            # Any other fault ends this step, not delivery: nothing is deleted but after a
            # 2xx, so the events stay, and a daemon that stopped here would keep none of the
            # promises of its 202s. The flusher backs off and says so.
            tally.blocked_by = StepFailed(exc)
        return tally

    async def settle(self) -> None:
        """Wait for an ack left committing, if any; OutboxUnavailable if it failed (its
        events stay pending and are sent again)."""
        acking, self._acking = self._acking, None
        if acking is None:
            return
        try:
            await acking
        except OutboxUnavailable:
            self._ack_failed = True
            raise
        self._ack_failed = False

    def _held_due(self) -> bool:
        now = self._clock()
        return any(h.next_at <= now for h in self._held.values())

    def _still_next(self, prefetched: tuple[Batch, frozenset[int]] | None) -> Batch | None:
        """The batch read ahead, if the events held aside are still those it leaves out."""
        if prefetched is None or prefetched[1] != frozenset(self._held):
            return None
        return prefetched[0]

    async def _deliver_request(self, request: Batch, tally: FlushResult) -> None:
        """The head batch as the store joined it, acked by its id range after a 2xx.

        The batch after it is read meanwhile (on the reader's thread, while this one is
        sent and acked) and kept for the next step only if this one was delivered. The ack
        is left committing (``settle``) when a batch follows and the last ack succeeded;
        the previous one is met once this send returns.
        Anything else (an expired event in it, a batch due for isolation, any answer but a
        2xx) takes its events one by one, exactly as ``_deliver_batch`` would.
        """
        now = self._clock()
        expiring = request.oldest_end_at is not None and now - request.oldest_end_at > WINDOW_S
        if expiring or self._head.reached(request.first_id, self._retry.isolate_after):
            await self.settle()
            batch = await self._drop_expired(await self._outbox.batch_events(request), tally)
            if batch:
                await self._deliver_batch(batch, tally)
            return
        held = frozenset(self._held)
        after = asyncio.ensure_future(
            self._outbox.next_request(
                self._settings.batch_max_events,
                self._settings.batch_max_bytes,
                held,
                after=request.last_id,
            )
        )
        try:
            outcome = await self._send_body(request.body, request.events, request.size, tally)
            await self.settle()  # the previous batch's ack, committed during this send
            if isinstance(outcome, Delivered):
                self._acking = asyncio.ensure_future(self._outbox.ack_batch(request))
                following = await _settled(after)
                self._next = None if following is None else (following, held)
                if following is None or self._ack_failed:
                    await self.settle()  # nothing to overlap it with, or the store fails
                self._delivered(request.events, tally)
                return
        finally:
            await _settled(after)
        await self._act(outcome, await self._outbox.batch_events(request), tally)
        blocked = tally.blocked_by
        if isinstance(blocked, Retry) and blocked.batch_suspect:
            self._head.failed(request.first_id)

    async def _drop_expired(
        self, batch: Sequence[StoredEvent], tally: FlushResult
    ) -> list[StoredEvent]:
        now = self._clock()
        expired: list[StoredEvent] = []
        live: list[StoredEvent] = []
        for e in batch:
            (expired if e.end_at is not None and now - e.end_at > WINDOW_S else live).append(e)
        if expired:
            detail = f"ended more than {WINDOW_TEXT} ago; {WINDOW_REFUSAL}"
            await self._outbox.dead_letter(expired, "expired", None, detail, now)
            tally.dead_lettered += len(expired)
            for event in expired:
                self._held.pop(event.id, None)
            logger.warning("events expired", count=len(expired), reason="expired")
        return live

    async def _deliver_batch(self, batch: Sequence[StoredEvent], tally: FlushResult) -> None:
        """Send the head batch, or, once it has failed often enough, isolate it in halves."""
        head = batch[0].id
        if self._head.reached(head, self._retry.isolate_after):
            self._head.reset()
            await self._isolate(batch, tally)
            return
        await self._deliver(batch, tally)
        blocked = tally.blocked_by
        if isinstance(blocked, Retry) and blocked.batch_suspect:
            self._head.failed(head)

    async def _deliver(self, batch: Sequence[StoredEvent], tally: FlushResult) -> bool:
        """Send ``batch``; bisect on 400 and 413. False when a retry or pause must come first."""
        outcome = await self._send(batch, tally)
        return await self._act(outcome, batch, tally)

    async def _act(
        self, outcome: Outcome, batch: Sequence[StoredEvent], tally: FlushResult
    ) -> bool:
        """What an outcome means for ``batch``: ack, dead-letter, bisect, or block."""
        now = self._clock()
        match outcome:
            case Delivered():
                await self._ack(batch, tally)
                return True
            case Reject() if self._refuses_requests(outcome, len(batch)):
                tally.blocked_by = outcome
                return False
            case Reject(status=status, detail=detail) if len(batch) == 1:
                await self._outbox.dead_letter(batch, "rejected", status, detail, now)
                tally.dead_lettered += 1
                logger.warning("event rejected", status=status, detail=detail, id=batch[0].id)
                return True
            case Split(status=status, detail=detail) if len(batch) == 1:
                await self._outbox.dead_letter(batch, "too_large", status, detail, now)
                tally.dead_lettered += 1
                logger.warning("event too large", size=batch[0].size, id=batch[0].id)
                return True
            case Reject() | Split():
                half = len(batch) // 2
                return await self._deliver(batch[:half], tally) and await self._deliver(
                    batch[half:], tally
                )
            case Retry() | Unauthorized() | Misconfigured():
                await self._outbox.record_failure(batch, now)
                tally.blocked_by = outcome
                return False

    def _refuses_requests(self, outcome: Reject, size: int) -> bool:
        """True when this 400 refuses the request itself, not an event in it.

        Counts each single-event rejection towards that verdict (see ``RejectStreak``).
        """
        if self._rejects.paused and outcome.detail == self._rejects.detail:
            return True  # a probe while paused, refused alike: stay paused
        if size > 1:
            return False
        return self._rejects.rejected(outcome.detail, self._retry.systemic_reject_after)

    async def _ack(self, batch: Sequence[StoredEvent], tally: FlushResult) -> None:
        await self._outbox.ack(batch)
        self._delivered(len(batch), tally)

    def _delivered(self, events: int, tally: FlushResult) -> None:
        tally.delivered += events
        self._deliveries += 1
        self._rejects.reset()

    async def _send(self, batch: Sequence[StoredEvent], tally: FlushResult) -> Outcome:
        body = request_body([e.body for e in batch])
        return await self._send_body(body, len(batch), sum(e.size for e in batch), tally)

    async def _send_body(self, body: bytes, events: int, size: int, tally: FlushResult) -> Outcome:
        tally.requests += 1
        started = time.perf_counter()
        outcome = await self._upstream.send_body(body)
        if not isinstance(outcome, Delivered):
            tally.failed_requests += 1
        logger.debug(
            "batch sent",
            events=events,
            bytes=size,
            outcome=type(outcome).__name__,
            status=getattr(outcome, "status", None),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outcome

    # --- a batch that keeps failing: isolate, hold, dead-letter ------------------------

    async def _isolate(self, batch: Sequence[StoredEvent], tally: FlushResult) -> None:
        """Send ``batch`` in halves: deliver what passes, hold the single events that fail."""
        isolation = IsolationPass.for_batch(len(batch))
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            if not await self._isolate_part(part, isolation, tally):
                break
        if isolation.outage or not isolation.delivered:
            if tally.blocked_by is None:
                tally.blocked_by = isolation.last_failure
            return
        now = self._clock()
        for event, outcome in isolation.suspects:
            self._held[event.id] = HeldEvent(event.id, now, deliveries_seen=self._deliveries)
            logger.warning(
                "event fails alone while others are delivered; held aside",
                id=event.id,
                reason=outcome.reason,
            )
        if tally.blocked_by is isolation.last_failure:
            tally.blocked_by = None

    async def _isolate_part(
        self, part: Sequence[StoredEvent], isolation: IsolationPass, tally: FlushResult
    ) -> bool:
        """One part of an isolation pass; False when the pass must stop."""
        if not part:
            return True
        outcome = await self._send(part, tally)
        if isinstance(outcome, Delivered):
            await self._ack(part, tally)
            isolation.delivered_one()
            return True
        if not (isinstance(outcome, Retry) and outcome.batch_suspect):
            return await self._act(outcome, part, tally)
        await self._outbox.record_failure(part, self._clock())
        isolation.failed(outcome)
        tally.blocked_by = outcome
        if isolation.outage:
            return False
        if len(part) == 1:
            isolation.suspects.append((part[0], outcome))
            return True
        half = len(part) // 2
        return await self._isolate_part(part[:half], isolation, tally) and (
            await self._isolate_part(part[half:], isolation, tally)
        )

    async def _retry_held(self, tally: FlushResult) -> None:
        """Send each held event that is due on its own; dead-letter one that keeps failing."""
        now = self._clock()
        due = sorted(i for i, h in self._held.items() if h.next_at <= now)
        if not due:
            return
        events = await self._outbox.events(due)
        for gone in set(due) - {e.id for e in events}:  # replayed elsewhere, or purged
            del self._held[gone]
        for event in await self._drop_expired(events, tally):
            held = self._held[event.id]
            outcome = await self._send([event], tally)
            if isinstance(outcome, Retry) and outcome.batch_suspect:
                await self._held_failed(event, held, outcome, tally)
                continue
            del self._held[event.id]
            if not await self._act(outcome, [event], tally):
                return

    async def _held_failed(
        self, event: StoredEvent, held: HeldEvent, outcome: Retry, tally: FlushResult
    ) -> None:
        now = self._clock()
        attempts = event.attempts + 1
        first_failure = event.first_failure_at if event.first_failure_at is not None else now
        if (
            attempts >= self._retry.max_attempts_single
            and now - first_failure >= self._retry.single_failure_window_s
            and self._deliveries > held.deliveries_seen
        ):
            detail = outcome.detail or outcome.reason
            await self._outbox.dead_letter([event], "upstream_error", outcome.status, detail, now)
            del self._held[event.id]
            tally.dead_lettered += 1
            logger.error(
                "event dead-lettered: the upstream fails it alone while delivering others",
                id=event.id,
                attempts=attempts,
                status=outcome.status,
                detail=detail,
            )
            return
        await self._outbox.record_failure([event], now)
        held.next_at = now + self._backoff.delay_for(held.tries)
        held.tries += 1
        held.deliveries_seen = self._deliveries


async def _settled(read: asyncio.Future[Batch | None]) -> Batch | None:
    """What a read ahead found, once it finished (it runs on the reader's thread either
    way); None if it failed, which the next read will meet again."""
    try:
        return await read
    except OutboxUnavailable:
        return None
