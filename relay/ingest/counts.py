"""What the runner-facing edge saw since start: ingest counts, ``relay.ops`` reads them.

The handlers pay a few integer increments per request; ``/metrics`` and ``/status`` read
the totals when asked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestCounts:
    """What the runner-facing server saw: the server counts, the collector reads."""

    requests: int = 0  # POSTs to the ingest path
    events: int = 0  # events in those that passed validation
    requests_accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # runner requests, by reason
    last_full_at: float | None = None  # the latest 503 for a full outbox (epoch seconds)
