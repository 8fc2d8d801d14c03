"""The delivery loop: when to send, how long to wait, and the state the relay is in.

``flush_once()`` is one deterministic step: ``relay.delivery.step`` sends (the held events that
are due, then the oldest batch) and acts on each answer; the flusher turns what stopped the
step into a state, a wait and a log line. ``run()`` is a loop around it that decides when a
batch is due. Only one request is in flight at a time, so delivery order is receive order,
except for an event held aside as a suspected poison (``relay.delivery.isolation``).

Nothing here ends the process: a failing store (disk full, a lock held elsewhere) is a
condition like an unreachable upstream, waited out with backoff. Events sent but not yet
acknowledged when the store fails are sent again later: delivery is at least once. So is
any other exception a step raises (a fault in the relay, a stored row it cannot handle):
state ``delivery_failing``, its traceback logged once per failure, backoff, the events kept.
Only a damaged outbox file ends the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from relay.config import FlusherSettings, RetrySettings
from relay.contract.intake import WINDOW_HOURS
from relay.delivery.backoff import Backoff
from relay.delivery.snapshot import (
    DeliverySnapshot,
    LastDelivery,
    LastError,
    RetryAsked,
    State,
)
from relay.delivery.step import Blocker, Delivery, StepFailed, StoreFailed
from relay.delivery.step import FlushResult as FlushResult  # the step's result, for callers
from relay.delivery.upstream import Misconfigured, Reject, Retry, Unauthorized, Upstream
from relay.store.outbox import Outbox
from relay.store.writer import OutboxUnavailable

logger = structlog.get_logger(__name__)

# What the error line says while delivery is paused and probing, by state.
_PAUSED: dict[State, str] = {
    "unauthorized": "upstream refuses the API key; delivery paused",
    "rejecting": "upstream refuses every request alike; delivery paused",
}
# A retried failure is logged louder as it persists: (seconds failing, or attempts) -> level.
_ESCALATION = ((60.0, 5, "warning"), (300.0, 10, "error"))
# How often a persisting condition (no key, bad key, old events) is logged again.
_REMIND_S = 60.0
# How often the flusher checks whether another process (a replay) wrote to the outbox.
_RECOUNT_S = 1.0
# An operator's "retry now" more often than this does nothing more (Flusher.retry_now).
_RETRY_ASKED_MIN_S = 1.0
STEP_FAILED = "a delivery step failed; its events are kept and it is retried with backoff"
STILL_FAILING = "delivery steps still fail; their events are kept"


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
        self.upstream = upstream
        self._settings = settings
        self._retry = retry
        self._backoff = Backoff.from_settings(retry)
        self._clock = clock
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a new API key: reconsider the wait at once
        self._attempt = 0
        self._resume_at = 0.0
        self._retry_asked_at = -_RETRY_ASKED_MIN_S
        self._reminder = _Reminder()
        self._state: State = "delivering" if upstream.has_api_key else "no_api_key"
        self.state_since = clock()
        self.retries = 0  # backoffs since start
        self.last_delivery: LastDelivery | None = None
        self.last_error: LastError | None = None
        self._oldest_received_at: float | None = None
        self._delivery = Delivery(outbox, upstream, settings, retry, self._backoff, clock)
        self._failing_since: float | None = None
        # Where the step failure last logged with its traceback was raised: a failure
        # raised elsewhere is logged with its own, the same one again is not.
        self._failure_logged: tuple[str, str, int | None] | None = None
        self._reported = (0, 0)  # delivered and dead-lettered at the last progress line

    @property
    def state(self) -> State:
        """What delivery is doing; ``state_since`` says since when."""
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        if state != self._state:
            self._state, self.state_since = state, self._clock()

    def snapshot(self) -> DeliverySnapshot:
        """What operators see of delivery now (``/metrics``, ``/status``): values only, the
        upstream's answer counts copied (a few entries), its latency histogram shared."""
        upstream = self.upstream
        return DeliverySnapshot(
            state=self._state,
            since=self.state_since,
            upstream_url=upstream.display_url,
            next_try_in_s=max(0.0, self._resume_at - self._clock()),
            retries=self.retries,
            last_delivery=self.last_delivery,
            last_error=self.last_error,
            expiry_warning_s=self._settings.expiry_warning_s,
            upstream_answers=MappingProxyType(dict(upstream.answers)),
            upstream_latency=upstream.latency,
        )

    async def flush_once(self, *, overlap: bool = False) -> FlushResult:
        """One step of delivery (``Delivery.step``), then the state and wait it leads to.

        ``overlap``: the step may leave its ack committing, met by the next step (``run``).
        """
        self._oldest_received_at = None
        return self._conclude(await self._delivery.step(overlap=overlap))

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
                    await self._report_progress()
                wait = await self._seconds_until_due()
            except OutboxUnavailable as exc:
                if not exc.transient:
                    raise
                self._conclude(FlushResult(blocked_by=StoreFailed(str(exc))))
                continue
            except Exception as exc:
                # The loop's own reads fail as a step can (a stored row it cannot handle):
                # the same backoff and state, never the end of the daemon.
                self._conclude(FlushResult(blocked_by=StepFailed(exc)))
                continue
            if wait > 0:
                await self._sleep(wait)
                continue
            await self.flush_once(overlap=True)
        try:
            await self._final_flush()
        finally:
            # An ack that failed leaves its events pending: they are sent again.
            with contextlib.suppress(OutboxUnavailable):
                await self._delivery.settle()

    def stop(self) -> None:
        """Ask ``run()`` to make its final flush and return."""
        self._stop.set()

    def retry_now(self) -> RetryAsked:
        """An operator says the upstream is fixed: end a backoff, or an unauthorized or
        rejecting pause, and try at once, as a new API key does. The state stays until the
        upstream answers. Asked again within a second, nothing more happens: a script in
        a loop cannot turn backoff into a hammering of the upstream."""
        now = self._clock()
        cut = max(0.0, self._resume_at - now)
        if not self.upstream.has_api_key or now - self._retry_asked_at < _RETRY_ASKED_MIN_S:
            return RetryAsked(self._state, 0.0, trying=False)
        self._retry_asked_at = now
        self._resume_at = 0.0
        for paused in ("unauthorized", "rejecting"):
            self._reminder.last.pop(paused, None)  # a refusal again is logged at once
        logger.info("retry asked: delivery tries now", state=self._state, cut_wait_s=round(cut, 1))
        self._wake.set()
        return RetryAsked(self._state, cut, trying=True)

    def api_key_changed(self) -> None:
        """A new API key is in force: a delivery paused for the key probes with it at once."""
        if not self.upstream.has_api_key:
            self.state = "no_api_key"
        elif self.state == "no_api_key":
            self.state = "delivering"
        elif self.state == "unauthorized":
            # The state stays until the probe answers; a refusal of the new key is logged.
            self._resume_at = 0.0
            self._reminder.last.pop("unauthorized", None)
        self._wake.set()

    async def _seconds_until_due(self) -> float:
        """0 when a request should go now; otherwise how long to wait (woken by appends)."""
        now = self._clock()
        if not self.upstream.has_api_key:
            self._warn_no_key(now)
            return _RECOUNT_S
        if now < self._resume_at:
            return self._resume_at - now
        self._outbox.appended.clear()
        held = self._delivery.held
        next_held_at = self._delivery.next_held_at()
        held_due = _RECOUNT_S if next_held_at is None else next_held_at - now
        counts = self._outbox.counts
        waiting = counts.events - len(held)
        if waiting <= 0:
            return max(0.0, min(held_due, _RECOUNT_S))
        if waiting >= self._settings.batch_max_events or (
            counts.bytes >= self._settings.batch_max_bytes
        ):
            return 0.0
        if self._oldest_received_at is None:
            # Cached until the next flush: every commit wakes this loop, and the oldest
            # pending event only changes when a flush removes events.
            self._oldest_received_at = await self._outbox.oldest_received_at(held)
            if self._oldest_received_at is None:
                return max(0.0, min(held_due, _RECOUNT_S))
        due = self._oldest_received_at + self._settings.flush_interval_s - now
        return max(0.0, min(held_due, due))

    def _warn_no_key(self, now: float) -> None:
        """Say at start, then once a minute while events wait, that delivery needs a key."""
        first = "no_api_key" not in self._reminder.last
        if self._reminder.due("no_api_key", now) and (first or self._outbox.counts.events):
            logger.warning(
                "no API key: events are accepted and kept, delivery waits for a key",
                pending=self._outbox.counts.events,
                hint="set DD_API_KEY or upstream.api_key",
            )

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopped, or if new events arrive while not paused."""
        waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._wake.wait())]
        if self._clock() >= self._resume_at and self.upstream.has_api_key:
            waits.append(asyncio.ensure_future(self._outbox.appended.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake.clear()
            for waiter in waits:
                waiter.cancel()

    async def _final_flush(self) -> None:
        """Send what is pending, unless the upstream asked us to wait (backoff, bad key)."""
        if not self.upstream.has_api_key or self._clock() < self._resume_at:
            return
        try:
            await self._outbox.refresh_counts()
        except OutboxUnavailable:
            return
        while self._outbox.counts.events > len(self._delivery.held):
            result = await self.flush_once()
            if result.blocked_by is not None or not (result.requests or result.dead_lettered):
                return

    async def _report_progress(self) -> None:
        """Once a minute, while anything was delivered or dead-lettered: one info line."""
        now = self._clock()
        counts = self._outbox.counts
        moved = counts.delivered_total, counts.dead_lettered_total
        if moved == self._reported or not self._reminder.due("progress", now):
            return
        oldest = await self._outbox.oldest_received_at()
        logger.info(
            "delivery progress",
            delivered=moved[0] - self._reported[0],
            dead_lettered=moved[1] - self._reported[1],
            pending=counts.events,
            oldest_pending_age_s=None if oldest is None else round(now - oldest, 1),
            state=self.state,
        )
        self._reported = moved

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
                f"pending events are close to the upstream's {WINDOW_HOURS}-hour window",
                oldest_end_age_h=round(age / 3600, 2),
                pending=self._outbox.counts.events,
            )

    # --- after a step: state, backoff, logs --------------------------------------------

    def _conclude(self, step: FlushResult) -> FlushResult:
        """Update state, backoff and totals from what one step did."""
        now = self._clock()
        wait = 0.0
        match step.blocked_by:
            case Retry() as retry:
                wait = self._back_off(retry.after_s)
                self.state = "retrying"
                self._log_retry(retry, now, wait)
            case Unauthorized(status=status, detail=detail):
                wait = self._pause("unauthorized", now, status, detail)
            case Reject(status=status, detail=detail):
                wait = self._pause("rejecting", now, status, detail)
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
            case StepFailed() as failed:
                wait = self._back_off(None)
                self._log_step_failure(failed, now, wait)
            case None:
                first = self.state == "delivering" and self.last_delivery is None
                # A step that raised nothing ends a failure run, sent or not.
                recovered = self.state == "delivery_failing"
                if (step.requests or recovered) and (self.state != "delivering" or first):
                    logger.info(
                        "first delivery" if first else "delivery resumed",
                        after_state=self.state,
                        delivered=step.delivered,
                        url=self.upstream.display_url,
                    )
                if step.delivered:
                    self.last_delivery = LastDelivery(now, step.delivered)
                if step.requests or recovered:
                    self._attempt = 0
                    self._failing_since = None
                    self.state = "delivering"
        if step.blocked_by is not None:
            self.last_error = LastError(now, self.state, _answer(step.blocked_by))
        self._resume_at = now + wait
        step.wait_s = wait
        return step

    def _log_retry(self, retry: Retry, now: float, wait: float) -> None:
        """A retry at info while it is new; warning, then error, as the failure persists."""
        if self._failing_since is None:
            self._failing_since = now
        failing_s = now - self._failing_since
        level = "info"
        for threshold_s, attempts, louder in _ESCALATION:
            if failing_s >= threshold_s or self._attempt >= attempts:
                level = louder
        getattr(logger, level)(
            "upstream retry",
            url=self.upstream.display_url,
            last_answer=retry.reason,
            attempt=self._attempt,
            failing_s=round(failing_s, 1),
            wait_s=round(wait, 3),
        )

    def _log_step_failure(self, failed: StepFailed, now: float, wait: float) -> None:
        """The traceback once per failure run, and once for each other place a step fails
        from; while the same failure goes on, a line without it once a minute."""
        if self._failing_since is None:
            self._failing_since = now
        where = _raised_at(failed.error)
        if self.state != "delivery_failing" or where != self._failure_logged:
            self.state = "delivery_failing"
            self._failure_logged = where
            self._reminder.last["delivery_failing"] = now
            logger.error(
                STEP_FAILED,
                error=failed.detail,
                pending=self._outbox.counts.events,
                wait_s=round(wait, 3),
                exc_info=failed.error,
            )
        elif self._reminder.due("delivery_failing", now):
            logger.error(
                STILL_FAILING,
                error=failed.detail,
                attempt=self._attempt,
                failing_s=round(now - self._failing_since, 1),
                pending=self._outbox.counts.events,
                wait_s=round(wait, 3),
            )

    def _pause(self, state: State, now: float, status: int, detail: str) -> float:
        """Pause delivery until the next probe; say so on entering, then once a minute."""
        wait = self._settings.unauthorized_probe_s
        if self._entering(state, now):
            logger.error(
                _PAUSED[state],
                status=status,
                detail=detail,
                probe_in_s=wait,
                pending=self._outbox.counts.events,
            )
        return wait

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
        self.retries += 1
        return wait

    def _entering(self, state: State, now: float) -> bool:
        """Switch to ``state``; True when its error line is due (new, or a minute since)."""
        due = self._reminder.due(state, now) or self.state != state
        self.state = state
        return due

    def _log_misconfigured(self, outcome: Misconfigured, wait: float) -> None:
        redirect = 300 <= outcome.status < 400
        logger.error(
            "upstream redirects; delivery retries with backoff"
            if redirect
            else "upstream answers as if the URL were wrong; delivery retries",
            status=outcome.status,
            detail=outcome.detail,
            location=outcome.location,
            url=self.upstream.display_url,
            hint="redirects are never followed: set upstream.url to the final URL"
            if redirect
            else "check upstream.url or upstream.site, and any proxy on the way",
            wait_s=round(wait, 3),
        )


def _answer(blocker: Blocker) -> str:
    """What stopped a step, in one line: the upstream's answer or the store's error."""
    match blocker:
        case Retry(reason=reason):
            return reason
        case StoreFailed(detail=detail):
            return f"outbox: {detail}"
        case StepFailed() as failed:
            return f"relay error: {failed.detail}"
        case _:
            return f"{blocker.status}: {blocker.detail}"


def _raised_at(error: BaseException) -> tuple[str, str, int | None]:
    """The exception's type and the line it was raised from: which failure it is, whatever
    its message (which may name an id or a value that changes from one step to the next)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__, "", None
    return type(error).__name__, frames[-1].filename, frames[-1].lineno
