"""The doctor's findings as counts by rule, for ``/metrics`` and ``/status``.

The rules (``relay.history.doctor``) look across the recent history: the newest records
are read, built into pipelines and examined in a worker thread. That costs about a third of
a second of CPU for 40,000 records, and the thread holds the GIL against the event loop
while it runs, which shows in ingest's p99: so it runs at most once per ``REFRESH_S``, and
only when events came or left since the last count (else every ``STALE_S``), whatever
the number of scrapes. A
failure keeps the last counts and is logged: ``/status`` and ``/metrics`` never fail for it.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from relay.history.doctor import RULES, counts_by_rule, examine_all
from relay.history.records import Record
from relay.history.tree import build_all
from relay.store.outbox import Outbox

logger = structlog.get_logger(__name__)

REFRESH_S = 60.0
STALE_S = 600.0
# The newest records examined: those the list page reads too.
SETTLED_RECORDS = 20_000
PENDING_RECORDS = 20_000


class ProblemCounts:
    """Problems by rule among the recent history; ``current()`` refreshes when stale."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._counts: dict[str, int] = dict.fromkeys(RULES, 0)
        self._at = -REFRESH_S
        self._seen: tuple[int, int, int] | None = None  # the traffic counted last time
        self._lock = asyncio.Lock()

    async def current(self) -> dict[str, int]:
        """The counts, read again when older than ``REFRESH_S`` and events came or left."""
        async with self._lock:
            counts = self._outbox.counts
            traffic = (counts.accepted_total, counts.delivered_total, counts.dead_lettered_total)
            age = time.monotonic() - self._at
            # Rules that wait (orphan, never-finished) may fire with no traffic: so at least
            # every STALE_S.
            if (age >= REFRESH_S and traffic != self._seen) or age >= STALE_S:
                self._at = time.monotonic()
                try:
                    records = await self._outbox.recent_records(SETTLED_RECORDS, PENDING_RECORDS)
                    self._counts = await asyncio.to_thread(_count, records, time.time())
                    self._seen = traffic
                except Exception:
                    logger.warning("problems not counted; the last counts stay", exc_info=True)
        return self._counts


def _count(records: list[Record], now: float) -> dict[str, int]:
    return counts_by_rule(examine_all(build_all(records), now=now))
