"""The delivery loop: drain the outbox upstream, oldest first, and act on each outcome.

``flush_once()`` is one deterministic step (send the oldest batch, act on the answer);
``run()`` is a loop around it that decides when a batch is due and how long to wait.
Only one batch is in flight at a time, so delivery order is receive order, and a batch
that must be retried holds back everything received after it.
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
from relay.outbox import Outbox, StoredEvent
from relay.schema import UPSTREAM_WINDOW
from relay.upstream import Delivered, Outcome, Reject, Retry, Split, Unauthorized, Upstream

logger = structlog.get_logger(__name__)

State = Literal["delivering", "retrying", "unauthorized", "no_api_key"]

# How often a persisting condition (no key, bad key, old events) is logged again.
_REMIND_S = 60.0
# How often the flusher checks whether another process (a replay) wrote to the outbox.
_RECOUNT_S = 1.0


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
    # Why the step stopped before the batch was done: the outcome that needs a wait.
    blocked_by: Retry | Unauthorized | None = None
    wait_s: float = 0.0


@dataclass
class _Tally:
    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    blocked_by: Retry | Unauthorized | None = None


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

    async def flush_once(self) -> FlushResult:
        """Send the oldest batch (expired events dead-lettered first) and act on the answer."""
        self._oldest_received_at = None
        batch = await self._outbox.next_batch(
            self._settings.batch_max_events, self._settings.batch_max_bytes
        )
        tally = _Tally()
        batch = await self._drop_expired(batch, tally)
        if batch:
            await self._deliver(batch, tally)
        return self._conclude(tally)

    async def run(self) -> None:
        """Deliver until ``stop()``, then make a final flush; the caller bounds its time."""
        last_recount = -_RECOUNT_S  # check at once on start: a backlog may be old already
        while not self._stop.is_set():
            if self._clock() - last_recount >= _RECOUNT_S:
                await self._outbox.refresh_counts()
                self._oldest_received_at = None  # another process may have written
                await self._warn_if_old()
                last_recount = self._clock()
            wait = await self._seconds_until_due()
            if wait > 0:
                await self._sleep(wait)
                continue
            await self.flush_once()
        await self._final_flush()

    def stop(self) -> None:
        """Ask ``run()`` to make its final flush and return."""
        self._stop.set()

    async def _seconds_until_due(self) -> float:
        """0 when a batch should go now; otherwise how long to wait (woken early by appends)."""
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
        counts = self._outbox.counts
        if counts.events == 0:
            return _RECOUNT_S
        if (
            counts.events >= self._settings.batch_max_events
            or counts.bytes >= self._settings.batch_max_bytes
        ):
            return 0.0
        if self._oldest_received_at is None:
            # Cached until the next flush: every commit wakes this loop, and the oldest
            # pending event only changes when a flush removes events.
            self._oldest_received_at = await self._outbox.oldest_received_at()
            if self._oldest_received_at is None:
                return _RECOUNT_S
        return max(0.0, self._oldest_received_at + self._settings.flush_interval_s - now)

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
        await self._outbox.refresh_counts()
        while self._outbox.counts.events:
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

    async def _deliver(self, batch: Sequence[StoredEvent], tally: _Tally) -> bool:
        """Send ``batch``; bisect on 400 and 413. False when a retry or pause must come first."""
        outcome = await self._send(batch, tally)
        now = self._clock()
        match outcome:
            case Delivered():
                await self._outbox.ack(batch)
                tally.delivered += len(batch)
                return True
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
            case Retry() | Unauthorized():
                await self._outbox.record_failure(batch, now)
                tally.blocked_by = outcome
                return False

    async def _send(self, batch: Sequence[StoredEvent], tally: _Tally) -> Outcome:
        tally.requests += 1
        self.stats.requests += 1
        outcome = await self._upstream.send([e.body for e in batch])
        if not isinstance(outcome, Delivered):
            self.stats.failed_requests += 1
        return outcome

    def _conclude(self, tally: _Tally) -> FlushResult:
        """Update state, backoff and totals from what one step did."""
        self.stats.delivered += tally.delivered
        self.stats.dead_lettered += tally.dead_lettered
        now = self._clock()
        wait = 0.0
        match tally.blocked_by:
            case Retry(reason=reason, after_s=after_s):
                wait = self._backoff.delay_for(self._attempt, after_s)
                self._attempt += 1
                self.state = "retrying"
                logger.info("upstream retry", reason=reason, attempt=self._attempt, wait_s=wait)
            case Unauthorized(status=status, detail=detail):
                wait = self._settings.unauthorized_probe_s
                if self._reminder.due("unauthorized", now) or self.state != "unauthorized":
                    logger.error(
                        "upstream refuses the API key; delivery paused",
                        status=status,
                        detail=detail,
                        probe_in_s=wait,
                        pending=self._outbox.counts.events,
                    )
                self.state = "unauthorized"
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
