"""Prometheus metrics for ``GET /metrics``, read from the relay's own state when scraped.

The collector reads the outbox's counts and the flusher's totals and state at scrape time,
so the ingest path pays nothing for them but a counter per refused request. Counters start
at 0 with the process (their HELP says so); the outbox's depth comes from the store and is
right after a restart.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.flusher import Flusher, State
from relay.outbox import Outbox

_SINCE_START = " Counted since this process started."


class RelayCollector(Collector):
    """The relay's metrics, from the outbox, the flusher (when there is one) and refusals."""

    def __init__(self, outbox: Outbox, flusher: Flusher | None, refused: Counter[str]) -> None:
        self._outbox = outbox
        self._flusher = flusher
        self.refused = refused  # runner requests refused, by reason: the server counts
        self.oldest_received_at: float | None = None  # set by the handler before a scrape

    def collect(self) -> Iterator[Metric]:
        counts = self._outbox.counts
        yield GaugeMetricFamily(
            "ci_relay_outbox_events", "Events waiting in the outbox.", value=counts.events
        )
        yield GaugeMetricFamily(
            "ci_relay_outbox_bytes", "Bytes of events waiting in the outbox.", value=counts.bytes
        )
        age = 0.0 if self.oldest_received_at is None else time.time() - self.oldest_received_at
        yield GaugeMetricFamily(
            "ci_relay_oldest_pending_age_seconds",
            "Seconds since the oldest waiting event was received (0 when none waits).",
            value=max(0.0, age),
        )
        yield CounterMetricFamily(
            "ci_relay_events_accepted",
            "Events accepted (answered 202) and committed to the outbox." + _SINCE_START,
            value=counts.accepted_total,
        )
        refused = CounterMetricFamily(
            "ci_relay_requests_refused",
            "Runner requests refused, by reason." + _SINCE_START,
            labels=["reason"],
        )
        for reason, count in sorted(self.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        if self._flusher is not None:
            yield from self._delivery(self._flusher)

    def _delivery(self, flusher: Flusher) -> Iterator[Metric]:
        stats = flusher.stats
        yield CounterMetricFamily(
            "ci_relay_events_delivered",
            "Events the upstream answered 2xx for." + _SINCE_START,
            value=stats.delivered,
        )
        yield CounterMetricFamily(
            "ci_relay_events_dead_lettered",
            "Events moved to the dead letters." + _SINCE_START,
            value=stats.dead_lettered,
        )
        requests = CounterMetricFamily(
            "ci_relay_upstream_requests",
            "Requests sent upstream, by outcome (delivered: 2xx)." + _SINCE_START,
            labels=["outcome"],
        )
        requests.add_metric(["delivered"], stats.requests - stats.failed_requests)
        requests.add_metric(["failed"], stats.failed_requests)
        yield requests
        state = GaugeMetricFamily(
            "ci_relay_delivery_state",
            "1 for the flusher's current delivery state, 0 for the others.",
            labels=["state"],
        )
        for name in get_args(State):
            state.add_metric([name], 1.0 if flusher.state == name else 0.0)
        yield state


def exposition(collector: RelayCollector) -> bytes:
    """The Prometheus text format of ``collector`` (a registry of its own, no globals)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
