"""Telling one bad event from a bad upstream: the flusher's bookkeeping for both.

A batch that keeps failing with 5xx or timeouts is either meeting an outage (every request
fails) or carrying a poison event (this batch fails, others pass). Only a delivery proves
the upstream works, so nothing here ever condemns an event without one:

- ``HeadFailures`` counts the consecutive suspect failures of the batch at the head of the
  outbox; past ``retry.isolate_after`` the flusher sends it in halves (an ``IsolationPass``).
- An ``IsolationPass`` delivers the halves that pass and collects the single events that
  fail alone. If nothing at all is delivered after a few failures it stops: an outage.
- ``HeldEvent``: a suspect set aside, retried on its own backoff while the events behind it
  flow; dead-lettered only after enough attempts, over enough time, with other deliveries
  since its last attempt.
- ``RejectStreak``: single-event 400s in a row with one detail and no delivery between
  them are a refusal of the requests themselves (a changed contract, a proxy), not of the
  events: the flusher pauses instead of dead-lettering the whole outbox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from relay.delivery.upstream import Retry
from relay.store.outbox import StoredEvent


@dataclass
class HeadFailures:
    """Consecutive suspect failures of the batch that starts with ``head_id``."""

    head_id: int | None = None
    count: int = 0

    def failed(self, head_id: int) -> None:
        if head_id != self.head_id:
            self.head_id, self.count = head_id, 0
        self.count += 1

    def reached(self, head_id: int, threshold: int) -> bool:
        return head_id == self.head_id and self.count >= threshold

    def reset(self) -> None:
        self.head_id, self.count = None, 0


@dataclass
class IsolationPass:
    """One pass of a failing batch in halves, depth first, failing halves split further."""

    # Failed requests in a row, with nothing delivered yet, after which the pass is taken
    # for an outage and stops: enough to reach a single event and try two of its siblings.
    budget: int
    delivered: bool = False
    failures_in_a_row: int = 0
    last_failure: Retry | None = None
    suspects: list[tuple[StoredEvent, Retry]] = field(default_factory=list)

    @classmethod
    def for_batch(cls, size: int) -> IsolationPass:
        return cls(budget=math.ceil(math.log2(max(size, 2))) + 2)

    @property
    def outage(self) -> bool:
        """Nothing delivered and the failures ran past the budget: stop, hold nothing."""
        return not self.delivered and self.failures_in_a_row > self.budget

    def delivered_one(self) -> None:
        self.delivered = True
        self.failures_in_a_row = 0

    def failed(self, outcome: Retry) -> None:
        self.failures_in_a_row += 1
        self.last_failure = outcome


@dataclass
class HeldEvent:
    """A single event that failed alone, set aside and retried on its own schedule."""

    id: int
    next_at: float
    tries: int = 0
    # The flusher's count of deliveries at this event's last attempt: a delivery since then
    # proves the upstream works while this event still fails.
    deliveries_seen: int = 0


@dataclass
class RejectStreak:
    """Single-event 400s in a row with the same detail, nothing delivered in between.

    ``paused``: the streak reached its threshold; 400s with that detail now refuse the
    request, not an event, until something is delivered.
    """

    detail: str | None = None
    count: int = 0
    paused: bool = False

    def rejected(self, detail: str, threshold: int) -> bool:
        """Count one more rejection; True when it makes the streak a refusal of requests."""
        if detail != self.detail:
            self.detail, self.count = detail, 0
        self.count += 1
        self.paused = self.count >= threshold
        return self.paused

    def reset(self) -> None:
        self.detail, self.count, self.paused = None, 0, False
