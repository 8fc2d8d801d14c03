"""The doctor's findings as counts by rule, for ``/metrics`` and ``/status``.

The rules (``relay.history.doctor``) look across the recent history: the newest records
are read, built into pipelines and examined in a worker thread, at most once per
``REFRESH_S`` whatever the number of scrapes, so that a scrape stays cheap and the event
loop never computes them.
"""

from __future__ import annotations

import asyncio
import time

from relay.history.doctor import RULES, counts_by_rule, examine_all
from relay.history.records import Record
from relay.history.tree import build_all
from relay.store.outbox import Outbox

REFRESH_S = 10.0
# The newest records examined: those the list page reads too.
SETTLED_RECORDS = 20_000
PENDING_RECORDS = 20_000


class ProblemCounts:
    """Problems by rule among the recent history; ``current()`` refreshes when stale."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._counts: dict[str, int] = dict.fromkeys(RULES, 0)
        self._at = -REFRESH_S
        self._lock = asyncio.Lock()

    async def current(self) -> dict[str, int]:
        """The counts, read again when older than ``REFRESH_S`` (one refresh at a time)."""
        async with self._lock:
            if time.monotonic() - self._at >= REFRESH_S:
                records = await self._outbox.recent_records(SETTLED_RECORDS, PENDING_RECORDS)
                self._counts = await asyncio.to_thread(_count, records, time.time())
                self._at = time.monotonic()
        return self._counts


def _count(records: list[Record], now: float) -> dict[str, int]:
    return counts_by_rule(examine_all(build_all(records), now=now))
