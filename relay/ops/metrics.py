"""Prometheus metrics for ``GET /metrics``, read from the relay's own state when scraped.

The collector reads the outbox's counts, the store's readings (``Outbox.readings``), the
ingest counts, delivery's snapshot (``relay.delivery.snapshot``), and the histograms
observed where things happen (``relay.meters``) at scrape time, so the ingest path pays a
few integer increments per request and one histogram observation per group commit.
Counters start at 0 with the process (their HELP says so); depth, age and dead letters
come from the store and are right after a restart. docs/metrics.md lists them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar, get_args

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.contract.intake import WINDOW_S, WINDOW_TEXT
from relay.delivery.snapshot import DeliverySnapshot, State
from relay.ingest.counts import IngestCounts, WebhookCounts
from relay.store.outbox import DEAD_LETTER_REASONS, Outbox, Readings

_SINCE_START = " Counted since this process started."


class RelayCollector(Collector):
    """The relay's metrics: outbox, ingest, delivery and upstream (when delivering).

    ``delivery`` gives delivery's snapshot at each scrape (``Flusher.snapshot``); None when
    the relay does not deliver. ``ingest`` is the counts the ingest routes keep.
    """

    def __init__(
        self,
        outbox: Outbox,
        delivery: Callable[[], DeliverySnapshot] | None,
        ingest: IngestCounts | None = None,
        webhooks: WebhookCounts | None = None,
    ) -> None:
        self._outbox = outbox
        self.delivery = delivery
        self.ingest = IngestCounts() if ingest is None else ingest
        self.webhooks = WebhookCounts() if webhooks is None else webhooks
        self.started_at = time.time()
        self.readings = Readings(None, None, {})  # the handler reads the store before a scrape
        self.problems: dict[str, int] = {}  # the doctor's counts by rule, read likewise

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "ci_relay_build_info",
            "Always 1; the version label says which ci-relay runs.",
            labels=["version"],
        )
        build.add_metric([__version__], 1.0)
        yield build
        yield _gauge(
            "ci_relay_start_time_seconds",
            "When this process started (epoch seconds).",
            self.started_at,
        )
        yield from self._store()
        yield from self._ingest()
        yield from self._webhooks()
        if self.delivery is not None:
            delivery = self.delivery()  # one snapshot for both groups
            yield from self._delivery(delivery)
            yield from self._upstream(delivery)

    def _store(self) -> Iterator[Metric]:
        counts, readings, now = self._outbox.counts, self.readings, time.time()
        yield _gauge("ci_relay_outbox_events", "Events waiting in the outbox.", counts.events)
        yield _gauge(
            "ci_relay_outbox_bytes", "Bytes of events waiting in the outbox.", counts.bytes
        )
        # Read just before the counts: an ack in between must not leave an age behind.
        oldest = readings.oldest_received_at if counts.events else None
        yield _gauge(
            "ci_relay_oldest_pending_age_seconds",
            "Seconds since the oldest waiting event was received (0 when none waits).",
            0.0 if oldest is None else max(0.0, now - oldest),
        )
        if readings.oldest_end_at is not None and counts.events:
            yield _gauge(
                "ci_relay_next_expiry_seconds",
                f"Seconds until the earliest-ending waiting event is {WINDOW_TEXT} past its end, "
                "when the intake would refuse it (absent when no waiting event has ended).",
                readings.oldest_end_at + WINDOW_S - now,
            )
        dead = GaugeMetricFamily(
            "ci_relay_dead_letters",
            "Dead letters kept in the outbox file, by reason (from the file).",
            labels=["reason"],
        )
        for reason in DEAD_LETTER_REASONS:
            dead.add_metric([reason], readings.dead_letters.get(reason, 0))
        yield dead
        problems = GaugeMetricFamily(
            "ci_relay_pipeline_problems",
            "Problems the doctor finds in the recent history, by rule (docs/doctor.md): "
            "events Datadog would drop, misfile or show wrongly.",
            labels=["rule"],
        )
        for rule, count in self.problems.items():
            problems.add_metric([rule], count)
        yield problems

    def _ingest(self) -> Iterator[Metric]:
        outbox, counts = self._outbox, self.ingest
        yield _counter(
            "ci_relay_requests_received", "Runner POSTs to the ingest path.", counts.requests
        )
        yield _counter(
            "ci_relay_requests_accepted", "Runner POSTs answered 202.", counts.requests_accepted
        )
        yield _counter(
            "ci_relay_events_received",
            "Events in runner requests that passed validation, stored or not.",
            counts.events,
        )
        yield _counter(
            "ci_relay_events_accepted",
            "Events accepted (answered 202) and committed to the outbox.",
            outbox.counts.accepted_total,
        )
        yield _filled(
            CounterMetricFamily(
                "ci_relay_requests_refused",
                "Runner requests refused, by reason." + _SINCE_START,
                labels=["reason"],
            ),
            [((reason,), count) for reason, count in counts.refused.items()],
        )
        yield from outbox.commit_seconds.collect()
        yield from outbox.group_events.collect()

    def _webhooks(self) -> Iterator[Metric]:
        counts = self.webhooks
        enabled = GaugeMetricFamily(
            "ci_relay_webhook_source_enabled",
            "1 when the relay takes this CI server's webhooks (its secret is set), else 0.",
            labels=["source"],
        )
        for source, on in sorted(counts.enabled.items()):
            enabled.add_metric([source], float(on))
        yield enabled
        deliveries = CounterMetricFamily(
            "ci_relay_webhooks_received",
            "Webhook deliveries by source, kind (from the kind header; other kinds are "
            "'other') and outcome (stored, duplicate, ignored, dead_lettered, unauthorized, "
            "invalid, not_configured, unavailable)." + _SINCE_START,
            labels=["source", "kind", "outcome"],
        )
        yield _filled(deliveries, counts.deliveries.items())
        events = CounterMetricFamily(
            "ci_relay_webhook_events_stored",
            "Events webhooks made and the outbox committed, by source." + _SINCE_START,
            labels=["source"],
        )
        yield _filled(events, [((source,), count) for source, count in counts.events.items()])

    def _delivery(self, delivery: DeliverySnapshot) -> Iterator[Metric]:
        counts = self._outbox.counts
        yield _counter(
            "ci_relay_events_delivered",
            "Events the upstream answered 2xx for, counted as they leave the outbox.",
            counts.delivered_total,
        )
        yield _counter(
            "ci_relay_events_dead_lettered",
            "Events moved to the dead letters: by delivery, and webhook content that could "
            "not become a valid event (reason invalid).",
            counts.dead_lettered_total,
        )
        yield _counter(
            "ci_relay_upstream_retries",
            "Times delivery backed off after a failure before trying again.",
            delivery.retries,
        )
        yield _gauge(
            "ci_relay_delivery_backoff_seconds",
            "Seconds until delivery tries again after a failure (0 when not waiting).",
            delivery.next_try_in_s,
        )
        if delivery.last_delivery is not None:
            yield _gauge(
                "ci_relay_last_delivery_timestamp_seconds",
                "When the upstream last answered 2xx (epoch seconds; absent until it has).",
                delivery.last_delivery.at,
            )
        state = GaugeMetricFamily(
            "ci_relay_delivery_state",
            "1 for the flusher's current delivery state, 0 for the others.",
            labels=["state"],
        )
        for name in get_args(State):
            state.add_metric([name], 1.0 if delivery.state == name else 0.0)
        yield state

    def _upstream(self, delivery: DeliverySnapshot) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ci_relay_upstream_requests",
            "Requests sent upstream, by outcome and the answer's status class "
            "(none: no answer)." + _SINCE_START,
            labels=["outcome", "status_class"],
        )
        for (outcome, status_class), count in sorted(delivery.upstream_answers.items()):
            requests.add_metric([outcome, status_class], count)
        yield requests
        yield from delivery.upstream_latency.collect()


_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _filled(family: _Family, values: Iterable[tuple[tuple[str, ...], float]]) -> _Family:
    """``family`` with one sample per label values, in their order."""
    for labels, value in sorted(values):
        family.add_metric(list(labels), value)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation + _SINCE_START, value=value)


def exposition(collector: RelayCollector) -> bytes:
    """The Prometheus text format of ``collector`` and the process's own metrics (memory,
    CPU, open files), from a registry of its own: no globals."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return generate_latest(registry)
