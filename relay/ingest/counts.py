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


# What became of a webhook delivery, the outcome label of ci_relay_webhooks_total.
WEBHOOK_OUTCOMES = (
    "stored",  # new events committed (some may have gone to the dead letters too)
    "duplicate",  # the delivery, or every object it announces, was stored before
    "ignored",  # a kind or status the relay makes no event of (ping, push, a queued job)
    "dead_lettered",  # authenticated, but nothing in it could become a valid event
    "unauthorized",  # the secret token or signature is missing or wrong (401)
    "invalid",  # not JSON, not the kind its header says, too large (4xx)
    "not_configured",  # the source has no secret set (404)
    "unavailable",  # the outbox could not take it (503 with Retry-After)
)


@dataclass
class WebhookCounts:
    """Webhook deliveries by (source, kind label, outcome), and the events they stored;
    ``enabled``: whether each source is served (its secret is set; fixed at start)."""

    enabled: dict[str, bool] = field(default_factory=dict)
    deliveries: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # by source
    dead_letters: Counter[str] = field(default_factory=Counter)  # by source
