"""Measurements taken where things happen, which ``relay.ops.metrics`` exposes when scraped.

A histogram has to be observed at the moment it measures (a commit, a request), unlike the
counts the collector reads from the relay's state. Each owner keeps its own instances
(never a global registry), so two relays in one process, as in the tests, stay apart.
Observing costs about a microsecond, once per group commit and once per upstream request.
"""

from __future__ import annotations

from prometheus_client import Histogram, disable_created_metrics

# No ``_created`` series beside each histogram: the text format does not need them, and
# they would be one more series per histogram for every scraper to store.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

_SINCE_START = " Counted since this process started."

# Seconds: from a millisecond commit on a fast disk to a stalled file system.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Events per group commit: one small request up to the writer's group cap.
_GROUP_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20_000)
# Seconds per upstream request, up to a request timeout.
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def commit_seconds() -> Histogram:
    """Seconds per group commit of accepted events (insert and fsync)."""
    return _histogram(
        "ci_relay_ingest_commit_seconds",
        "Seconds per group commit of accepted events to the outbox.",
        _LATENCY_BUCKETS,
    )


def group_events() -> Histogram:
    """Events per group commit: how many requests' events shared one transaction."""
    return _histogram(
        "ci_relay_ingest_group_commit_events",
        "Events committed together in one group commit.",
        _GROUP_BUCKETS,
    )


def upstream_seconds() -> Histogram:
    """Seconds per upstream request, from sending to the answer read (or the failure)."""
    return _histogram(
        "ci_relay_upstream_request_seconds",
        "Seconds per request to the upstream, answer read or failure included.",
        _UPSTREAM_BUCKETS,
    )


def _histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
    """A histogram in no registry: ``relay.ops.metrics`` collects it from its owner."""
    return Histogram(name, documentation + _SINCE_START, buckets=buckets, registry=None)
