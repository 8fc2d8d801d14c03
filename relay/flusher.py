"""The delivery loop: drain the outbox upstream, oldest first, and act on each outcome.

``flush_once()`` is one deterministic step (retry the held events that are due, send the
oldest batch, act on the answer); ``run()`` is a loop around it that decides when a batch
is due and how long to wait. Only one request is in flight at a time, so delivery order is
receive order, except for an event held aside as a suspected poison (``relay.isolation``).

Nothing here ends the process: a failing store (disk full, a lock held elsewhere) is a
condition like an unreachable upstream, waited out with backoff. Events sent but not yet
acknowledged when the store fails are sent again later: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

from relay.backoff import Backoff
from relay.config import FlusherSettings, RetrySettings
from relay.isolation import HeadFailures, HeldEvent, IsolationPass, RejectStreak
from relay.outbox import Outbox, OutboxUnavailable, StoredEvent
from relay.schema import UPSTREAM_WINDOW
from relay.upstream import (
    Delivered,
    Misconfigured,
    Outcome,
    Reject,
    Retry,
    Split,
    Unauthorized,
    Upstream,
)

logger = structlog.get_logger(__name__)

State = Literal[
    "delivering",
    "retrying",
    "unauthorized",
    "no_api_key",
    "misconfigured",
    "rejecting",
    "store_unavailable",
]

# How often a persisting condition (no key, bad key, old events) is logged again.
_REMIND_S = 60.0
# How often the flusher checks whether another process (a replay) wrote to the outbox.
_RECOUNT_S = 1.0


@dataclass(frozen=True)
class StoreFailed:
    """The outbox could not be read or written (disk full, locked, I/O error)."""

    detail: str


Blocker = Retry | Unauthorized | Misconfigured | Reject | StoreFailed


@dataclass
class FlushStats:
    """Totals since start, for the exit summary and the operator."""

    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    failed_requests: int = 0


@dataclass(frozen=True)
class FlushResult:
    """What one ``flush_once`` did."""

    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    # Why the step stopped before the batch was done: the condition that needs a wait.
    blocked_by: Blocker | None = None
    wait_s: float = 0.0


@dataclass
class _Tally:
    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    blocked_by: Blocker | None = None


@dataclass
class _Reminder:
    """Rate-limits a repeated log line to one per ``_REMIND_S``."""

    last: dict[str, float] = field(default_factory=dict)

    def due(self, key: str, now: float) -> bool:
        if now - self.last.get(key, -_REMIND_S) < _REMIND_S:
            return False
        self.last[key] = now
        return True


class Flusher:
    """Delivers the outbox's events upstream; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        upstream: Upstream,
        settings: FlusherSettings,
        retry: RetrySettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._upstream = upstream
        self._settings = settings
        self._retry = retry
        self._backoff = Backoff.from_settings(retry)
        self._clock = clock
        self._stop = asyncio.Event()
        self._attempt = 0
        self._resume_at = 0.0
        # The daemon says at start that delivery waits for a key; remind a minute later.
        self._reminder = _Reminder({"no_api_key": clock()})
        self.state: State = "delivering" if upstream.has_api_key else "no_api_key"
        self.stats = FlushStats()
        self._oldest_received_at: float | None = None
        self._head = HeadFailures()
        self._held: dict[int, HeldEvent] = {}
        self._rejects = RejectStreak()
        self._deliveries = 0

    async def flush_once(self) -> FlushResult:
        """Retry the held events that are due, then send the oldest batch and act on it."""
        self._oldest_received_at = None
        tally = _Tally()
        try:
            await self._retry_held(tally)
            if tally.blocked_by is None:
                batch = await self._outbox.next_batch(
                    self._settings.batch_max_events, self._settings.batch_max_bytes, self._held
                )
                batch = await self._drop_expired(batch, tally)
                if batch:
                    await self._deliver_batch(batch, tally)
        except OutboxUnavailable as exc:
            if not exc.transient:
                raise  # a damaged file: no retry mends it, the daemon stops and says why
            tally.blocked_by = StoreFailed(str(exc))
        return self._conclude(tally)

    async def run(self) -> None:
        """Deliver until ``stop()``, then make a final flush; the caller bounds its time."""
        last_recount = -_RECOUNT_S  # check at once on start: a backlog may be old already
        while not self._stop.is_set():
            try:
                if self._clock() - last_recount >= _RECOUNT_S:
                    last_recount = self._clock()
                    await self._outbox.refresh_counts()
                    self._oldest_received_at = None  # another process may have written
                    await self._warn_if_old()
                wait = await self._seconds_until_due()
            except OutboxUnavailable as exc:
                if not exc.transient:
                    raise
                self._conclude(_Tally(blocked_by=StoreFailed(str(exc))))
                continue
            if wait > 0:
                await self._sleep(wait)
                continue
            await self.flush_once()
        await self._final_flush()

    def stop(self) -> None:
        """Ask ``run()`` to make its final flush and return."""
        self._stop.set()

    async def _seconds_until_due(self) -> float:
        """0 when a request should go now; otherwise how long to wait (woken by appends)."""
        now = self._clock()
        if not self._upstream.has_api_key:
            if self._reminder.due("no_api_key", now) and self._outbox.counts.events:
                logger.warning(
                    "delivery waits for an API key",
                    pending=self._outbox.counts.events,
                    hint="set DD_API_KEY or upstream.api_key",
                )
            return _RECOUNT_S
        if now < self._resume_at:
            return self._resume_at - now
        self._outbox.appended.clear()
        held_due = min((h.next_at - now for h in self._held.values()), default=_RECOUNT_S)
        counts = self._outbox.counts
        waiting = counts.events - len(self._held)
        if waiting <= 0:
            return max(0.0, min(held_due, _RECOUNT_S))
        if waiting >= self._settings.batch_max_events or (
            counts.bytes >= self._settings.batch_max_bytes
        ):
            return 0.0
        if self._oldest_received_at is None:
            # Cached until the next flush: every commit wakes this loop, and the oldest
            # pending event only changes when a flush removes events.
            self._oldest_received_at = await self._outbox.oldest_received_at(self._held)
            if self._oldest_received_at is None:
                return max(0.0, min(held_due, _RECOUNT_S))
        due = self._oldest_received_at + self._settings.flush_interval_s - now
        return max(0.0, min(held_due, due))

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopped, or if new events arrive while not paused."""
        waits = [asyncio.ensure_future(self._stop.wait())]
        if self._clock() >= self._resume_at and self._upstream.has_api_key:
            waits.append(asyncio.ensure_future(self._outbox.appended.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _final_flush(self) -> None:
        """Send what is pending, unless the upstream asked us to wait (backoff, bad key)."""
        if not self._upstream.has_api_key or self._clock() < self._resume_at:
            return
        try:
            await self._outbox.refresh_counts()
        except OutboxUnavailable:
            return
        while self._outbox.counts.events > len(self._held):
            result = await self.flush_once()
            if result.blocked_by is not None or not (result.requests or result.dead_lettered):
                return

    async def _drop_expired(self, batch: Sequence[StoredEvent], tally: _Tally) -> list[StoredEvent]:
        now = self._clock()
        window = UPSTREAM_WINDOW.total_seconds()
        expired: list[StoredEvent] = []
        live: list[StoredEvent] = []
        for e in batch:
            (expired if e.end_at is not None and now - e.end_at > window else live).append(e)
        if expired:
            detail = "ended more than 18 hours ago; the Datadog intake refuses such events"
            await self._outbox.dead_letter(expired, "expired", None, detail, now)
            tally.dead_lettered += len(expired)
            for event in expired:
                self._held.pop(event.id, None)
            logger.warning("events expired", count=len(expired), reason="expired")
        return live

    async def _warn_if_old(self) -> None:
        """Warn (once a minute) while pending events near the upstream's 18-hour window.

        Checked from the loop, not from a send, so it also warns while delivery is paused.
        """
        now = self._clock()
        if not self._reminder.due("old_events_check", now):
            return
        oldest_end = await self._outbox.oldest_end_at()
        if oldest_end is None:
            return
        age = now - oldest_end
        if age > self._settings.expiry_warning_s:
            logger.warning(
                "pending events are close to the upstream's 18-hour window",
                oldest_end_age_h=round(age / 3600, 2),
                pending=self._outbox.counts.events,
            )

    # --- one batch ---------------------------------------------------------------------

    async def _deliver_batch(self, batch: Sequence[StoredEvent], tally: _Tally) -> None:
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

    async def _deliver(self, batch: Sequence[StoredEvent], tally: _Tally) -> bool:
        """Send ``batch``; bisect on 400 and 413. False when a retry or pause must come first."""
        outcome = await self._send(batch, tally)
        return await self._act(outcome, batch, tally)

    async def _act(self, outcome: Outcome, batch: Sequence[StoredEvent], tally: _Tally) -> bool:
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
            case Split(detail=detail) if len(batch) == 1:
                await self._outbox.dead_letter(batch, "too_large", 413, detail, now)
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
        if self.state == "rejecting" and outcome.detail == self._rejects.detail:
            return True  # a probe while paused, refused alike: stay paused
        if size > 1:
            return False
        return self._rejects.rejected(outcome.detail) >= self._retry.systemic_reject_after

    async def _ack(self, batch: Sequence[StoredEvent], tally: _Tally) -> None:
        await self._outbox.ack(batch)
        tally.delivered += len(batch)
        self._deliveries += 1
        self._rejects.reset()

    async def _send(self, batch: Sequence[StoredEvent], tally: _Tally) -> Outcome:
        tally.requests += 1
        self.stats.requests += 1
        outcome = await self._upstream.send([e.body for e in batch])
        if not isinstance(outcome, Delivered):
            self.stats.failed_requests += 1
        return outcome

    # --- a batch that keeps failing: isolate, hold, dead-letter ------------------------

    async def _isolate(self, batch: Sequence[StoredEvent], tally: _Tally) -> None:
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
        self, part: Sequence[StoredEvent], isolation: IsolationPass, tally: _Tally
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

    async def _retry_held(self, tally: _Tally) -> None:
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
        self, event: StoredEvent, held: HeldEvent, outcome: Retry, tally: _Tally
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

    # --- after a step: state, backoff, logs --------------------------------------------

    def _conclude(self, tally: _Tally) -> FlushResult:
        """Update state, backoff and totals from what one step did."""
        self.stats.delivered += tally.delivered
        self.stats.dead_lettered += tally.dead_lettered
        now = self._clock()
        wait = 0.0
        match tally.blocked_by:
            case Retry() as retry:
                wait = self._back_off(retry.after_s)
                self.state = "retrying"
                logger.info(
                    "upstream retry", reason=retry.reason, attempt=self._attempt, wait_s=wait
                )
            case Unauthorized(status=status, detail=detail):
                wait = self._settings.unauthorized_probe_s
                if self._entering("unauthorized", now):
                    logger.error(
                        "upstream refuses the API key; delivery paused",
                        status=status,
                        detail=detail,
                        probe_in_s=wait,
                        pending=self._outbox.counts.events,
                    )
            case Reject(status=status, detail=detail):
                wait = self._settings.unauthorized_probe_s
                if self._entering("rejecting", now):
                    logger.error(
                        "upstream refuses every request alike; delivery paused",
                        status=status,
                        detail=detail,
                        probe_in_s=wait,
                        pending=self._outbox.counts.events,
                    )
            case Misconfigured() as misconfigured:
                wait = self._back_off(None)
                if self._entering("misconfigured", now):
                    self._log_misconfigured(misconfigured, wait)
            case StoreFailed(detail=detail):
                wait = self._back_off(None)
                if self._entering("store_unavailable", now):
                    logger.error(
                        "the outbox cannot be written; delivery backs off",
                        error=detail,
                        wait_s=round(wait, 3),
                    )
            case None:
                if self.state != "delivering" and tally.requests:
                    logger.info("delivery resumed", after_state=self.state)
                if tally.requests:
                    self._attempt = 0
                    self.state = "delivering"
        self._resume_at = now + wait
        return FlushResult(
            tally.delivered, tally.dead_lettered, tally.requests, tally.blocked_by, wait
        )

    def _back_off(self, after_s: float | None) -> float:
        """The next backoff delay (floored by the upstream's wait, capped); counts the attempt."""
        if after_s is not None and after_s > self._retry.max_wait_s:
            logger.warning(
                "upstream asked for a longer wait; capped",
                asked_s=after_s,
                max_wait_s=self._retry.max_wait_s,
            )
        wait = self._backoff.delay_for(self._attempt, after_s)
        self._attempt += 1
        return wait

    def _entering(self, state: State, now: float) -> bool:
        """Switch to ``state``; True when its error line is due (new, or a minute since)."""
        due = self._reminder.due(state, now) or self.state != state
        self.state = state
        return due

    def _log_misconfigured(self, outcome: Misconfigured, wait: float) -> None:
        if outcome.location is not None or 300 <= outcome.status < 400:
            logger.error(
                "upstream redirects; delivery retries with backoff",
                status=outcome.status,
                location=outcome.location,
                url=self._upstream.display_url,
                hint="redirects are never followed: set upstream.url to the final URL",
                wait_s=round(wait, 3),
            )
            return
        logger.error(
            "upstream answers as if the URL were wrong; delivery retries",
            status=outcome.status,
            detail=outcome.detail,
            url=self._upstream.display_url,
            hint="check upstream.url or upstream.site, and any proxy on the way",
            wait_s=round(wait, 3),
        )
