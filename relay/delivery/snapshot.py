"""What operators see of delivery: values the flusher publishes, never the flusher itself.

``Flusher.snapshot()`` builds a ``DeliverySnapshot`` when ``/metrics`` or ``/status`` asks,
so the operator surfaces (``relay.ops``) read delivery's state without holding its live
objects or reaching into the step and the upstream client. This is the one module of
``relay.delivery`` that ``relay.ops`` imports, so it imports nothing of delivery itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prometheus_client import Histogram

State = Literal[
    "delivering",
    "retrying",
    "unauthorized",
    "no_api_key",
    "misconfigured",
    "rejecting",
    "store_unavailable",
    "delivery_failing",
]


@dataclass(frozen=True)
class LastDelivery:
    """The latest request the upstream answered 2xx: when, and how many events it took."""

    at: float
    events: int


@dataclass(frozen=True)
class LastError:
    """The latest failed step: when, the state it led to, and the upstream's answer."""

    at: float
    state: State
    answer: str


@dataclass(frozen=True)
class DeliverySnapshot:
    """Delivery as it stands when the snapshot is taken (times in epoch seconds)."""

    state: State
    since: float  # when delivery entered ``state``
    upstream_url: str  # as logs show it: no login or secret
    next_try_in_s: float  # until delivery tries again after a failure; 0 when not waiting
    retries: int  # backoffs since start
    last_delivery: LastDelivery | None
    last_error: LastError | None
    # Age of a pending event's end past which it counts as close to expiring.
    expiry_warning_s: float
    # Requests sent upstream since start, by (outcome, status class): a copy, a few entries.
    upstream_answers: Mapping[tuple[str, str], int]
    # Seconds per upstream request (``relay.meters``): the live histogram, only collected.
    upstream_latency: Histogram


@dataclass(frozen=True)
class RetryAsked:
    """What an operator's "retry now" found: the state then, the wait it cut short (0 when
    delivery was not waiting), and whether delivery tries at once (not without an API key,
    nor twice within a second)."""

    state: State
    cut_wait_s: float
    trying: bool
