"""What ``GET /status`` answers, and what ``ci-relay status`` makes of it.

The relay builds one JSON document (``snapshot``) from the outbox, the store's readings
and what delivery publishes (``relay.delivery.snapshot``), with the conditions that need
an operator named in ``conditions``. The command fetches it, prints it for a person
(``render``) or as JSON, and exits with the status of the most urgent condition
(``exit_status``), so that a script can act on it.

The counters since start (events accepted and delivered, runner requests by refusal
reason, upstream requests by outcome, webhooks by source) are there for ``ci-relay top``,
which computes rates from their differences between two reads; the upstream latency's
quantiles over the last minute are computed here (``LatencyWindow``).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# typing's TypedDict is not enough for pydantic before Python 3.12, and GET /openapi.json
# describes this document with pydantic's JSON Schema of these types.
from typing_extensions import TypedDict

from relay.contract.intake import WINDOW_HOURS, WINDOW_S

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from relay.config import OutboxSettings
    from relay.delivery.snapshot import DeliverySnapshot
    from relay.ingest.counts import IngestCounts, WebhookCounts
    from relay.store.outbox import Outbox, Readings
    from relay.store.writer import OutboxCounts

# A refusal for a full outbox this recent still counts as "full", though a delivery may
# since have made room for one more request.
_FULL_RECENTLY_S = 60.0


@dataclass(frozen=True)
class Condition:
    """Something that needs an operator, and the exit status ``ci-relay status`` gives it."""

    name: str
    exit_status: int
    meaning: str


# In order of urgency: when several hold, the command exits with the first one's status.
CONDITIONS = (
    Condition("unreachable", 3, "no relay answers at the URL (not running, wrong port)"),
    Condition("expiring", 4, f"pending events are near the intake's {WINDOW_HOURS}-hour window"),
    Condition("outbox_full", 5, "the outbox is at its limits: runners get 503"),
    Condition("unauthorized", 6, "the upstream refuses the API key; delivery paused"),
    Condition("no_api_key", 7, "no API key is set; events are kept, none delivered"),
    Condition("rejecting", 8, "the upstream refuses every request alike; delivery paused"),
    Condition("misconfigured", 9, "the upstream URL is wrong (404, redirect); retried"),
    Condition("retrying", 10, "the upstream fails (5xx, 429, unreachable); retried"),
    Condition("store_unavailable", 11, "the outbox file cannot be written; retried"),
    # Delivery states exclude one another, so its place among them changes no verdict; it
    # comes last so that no exit status scripts already read changes.
    Condition(
        "delivery_failing", 12, "a delivery step fails inside the relay (see its log); retried"
    ),
)
_BY_NAME = {condition.name: condition for condition in CONDITIONS}
EXIT_UNREACHABLE = _BY_NAME["unreachable"].exit_status
# Delivery states that are conditions of their own; "delivering" is not one.
_STATE_CONDITIONS = frozenset(_BY_NAME) - {"unreachable", "expiring", "outbox_full"}


class Moment(TypedDict):
    """A time (ISO 8601 UTC) and how far it is from now in seconds (negative: past)."""

    at: str
    in_s: float


class LastDelivery(Moment):
    events: int


class LastError(Moment):
    state: str
    answer: str


class OutboxStatus(TypedDict):
    path: str
    file_bytes: int
    events: int
    bytes: int
    max_events: int
    max_bytes: int
    full: bool
    oldest_pending_age_s: float | None
    next_expiry: Moment | None
    accepted_since_start: int


class UpstreamLatency(TypedDict):
    """Seconds per upstream request over the last ``window_s`` seconds (``LatencyWindow``):
    how many requests, and their median and 99th percentile (null without a request)."""

    window_s: float
    requests: int
    p50_s: float | None
    p99_s: float | None


class UpstreamStatus(TypedDict):
    """What the upstream answered since start, and how fast of late."""

    # By outcome (delivered, retry, too_large, rejected, unauthorized, misconfigured), then
    # by the answer's status class (2xx ... 5xx; none: no answer).
    requests_since_start: dict[str, dict[str, int]]
    latency: UpstreamLatency


class DeliveryStatus(TypedDict):
    state: str
    since: Moment
    upstream: str
    next_try_in_s: float
    delivered_since_start: int
    dead_lettered_since_start: int
    retries_since_start: int
    last_delivery: LastDelivery | None
    last_error: LastError | None
    # Age of a pending event's end past which the "expiring" condition holds.
    expiry_warning_s: float
    upstream_requests: UpstreamStatus


class IngestStatus(TypedDict):
    """What runners sent to the ingest path since start (runner requests, not webhooks)."""

    requests_since_start: int
    requests_accepted_since_start: int
    events_received_since_start: int  # in requests that passed validation, stored or not
    refused_since_start: dict[str, int]  # requests, by reason


class WebhookSourceStatus(TypedDict):
    """One CI server's webhooks: served or not, and what its deliveries became."""

    enabled: bool
    path: str
    deliveries: dict[str, int]  # by outcome, since start
    events_since_start: int
    dead_letters_since_start: int


class StatusDocument(TypedDict):
    """The ``/status`` document."""

    version: str
    started_at: str
    uptime_s: float
    outbox: OutboxStatus
    dead_letters: dict[str, int]
    delivery: DeliveryStatus | None
    webhooks: dict[str, WebhookSourceStatus]
    problems: dict[str, int]  # the doctor's findings in the recent history, by rule
    conditions: list[str]
    ingest: IngestStatus


def exit_status(document: Mapping[str, Any]) -> int:
    """The exit status for a ``/status`` document: 0, or its most urgent condition's."""
    named = set(document.get("conditions", ()))
    for condition in CONDITIONS:
        if condition.name in named:
            return condition.exit_status
    return 0


def exit_statuses_help() -> str:
    """The exit statuses, as ``ci-relay status --help`` lists them."""
    lines = [
        "exit status (the most urgent condition when several hold):",
        "  0  delivering or idle",
    ]
    lines += [f"  {c.exit_status:<2} {c.name}: {c.meaning}" for c in CONDITIONS]
    lines.append("  2  usage: a bad option or configuration")
    return "\n".join(lines)


def snapshot(
    outbox: Outbox,
    readings: Readings,
    ingest: IngestCounts,
    settings: OutboxSettings,
    delivery: DeliverySnapshot | None,
    started_at: float,
    version: str,
    webhooks: WebhookCounts | None = None,
    problems: dict[str, int] | None = None,
) -> StatusDocument:
    """The ``/status`` document: what the relay holds, what delivery does, what needs care."""
    now = time.time()
    outbox_status = _outbox(outbox, readings, ingest, settings, now)
    delivery_status = (
        None if delivery is None else _delivery(delivery, outbox.counts, started_at, now)
    )
    warning_s = None if delivery is None else delivery.expiry_warning_s
    return {
        "version": version,
        "started_at": _iso(started_at),
        "uptime_s": round(now - started_at, 1),
        "outbox": outbox_status,
        "dead_letters": readings.dead_letters,
        "delivery": delivery_status,
        "webhooks": {} if webhooks is None else _webhooks(webhooks),
        "problems": problems or {},
        "conditions": _conditions(outbox_status, delivery_status, readings, warning_s, now),
        "ingest": {
            "requests_since_start": ingest.requests,
            "requests_accepted_since_start": ingest.requests_accepted,
            "events_received_since_start": ingest.events,
            "refused_since_start": dict(sorted(ingest.refused.items())),
        },
    }


def _outbox(
    outbox: Outbox,
    readings: Readings,
    ingest: IngestCounts,
    settings: OutboxSettings,
    now: float,
) -> OutboxStatus:
    counts = outbox.counts
    recently_full = ingest.last_full_at is not None and now - ingest.last_full_at < _FULL_RECENTLY_S
    full = counts.full(settings) is not None
    oldest, end = readings.oldest_received_at, readings.oldest_end_at
    return {
        "path": str(settings.path),
        "file_bytes": _file_bytes(settings.path),
        "events": counts.events,
        "bytes": counts.bytes,
        "max_events": settings.max_events,
        "max_bytes": settings.max_bytes,
        "full": full or recently_full,
        "oldest_pending_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
        "next_expiry": None if end is None else _moment(end + WINDOW_S, now),
        "accepted_since_start": counts.accepted_total,
    }


def _webhooks(counts: WebhookCounts) -> dict[str, WebhookSourceStatus]:
    by_source: dict[str, dict[str, int]] = {source: {} for source in counts.enabled}
    for (source, _kind, outcome), count in counts.deliveries.items():
        outcomes = by_source.setdefault(source, {})
        outcomes[outcome] = outcomes.get(outcome, 0) + count
    return {
        source: {
            "enabled": counts.enabled.get(source, False),
            "path": f"/webhooks/{source}",
            "deliveries": dict(sorted(outcomes.items())),
            "events_since_start": counts.events[source],
            "dead_letters_since_start": counts.dead_letters[source],
        }
        for source, outcomes in sorted(by_source.items())
    }


def _delivery(
    delivery: DeliverySnapshot, counts: OutboxCounts, started_at: float, now: float
) -> DeliveryStatus:
    last = delivery.last_delivery
    error = delivery.last_error
    answers: dict[str, dict[str, int]] = {}
    for (outcome, status_class), count in sorted(delivery.upstream_answers.items()):
        answers.setdefault(outcome, {})[status_class] = count
    return {
        "state": delivery.state,
        "since": _moment(delivery.since, now),
        "upstream": delivery.upstream_url,
        "next_try_in_s": round(delivery.next_try_in_s, 1),
        "delivered_since_start": counts.delivered_total,
        "dead_lettered_since_start": counts.dead_lettered_total,
        "retries_since_start": delivery.retries,
        "last_delivery": None
        if last is None
        else LastDelivery(**_moment(last.at, now), events=last.events),
        "last_error": None
        if error is None
        else LastError(**_moment(error.at, now), state=error.state, answer=error.answer),
        "expiry_warning_s": delivery.expiry_warning_s,
        "upstream_requests": {
            "requests_since_start": answers,
            "latency": latency_window(delivery.upstream_latency, started_at).quantiles(now),
        },
    }


# --- upstream latency over the last minute ----------------------------------------------

LATENCY_WINDOW_S = 60.0
_READ_EVERY_S = 1.0  # at most one kept reading a second, however often /status is asked


class LatencyWindow:
    """Quantiles of one histogram over about the last minute, from its cumulative buckets.

    A Prometheus histogram holds, per bucket upper bound, how many observations since start
    were at most that bound. Each time the document is built the counts are read, and kept
    at most once a second for a little over a minute (about 60 readings of 14 integers).
    The requests of the window are the counts now less those of the newest kept reading at
    least ``LATENCY_WINDOW_S`` old; until there is one, less the oldest kept, which at first
    is zeros at the relay's start: the window is then shorter (or, when /status was not
    asked for a while, longer), and ``window_s`` says how long it is.

    A quantile q is found as Prometheus's ``histogram_quantile`` finds it: the first bucket
    whose cumulative count reaches q of the window's requests, and a linear interpolation
    between its lower and upper bounds (0 below the first); in the +Inf bucket, the largest
    finite bound. It is so exact to a bucket (relay.meters: 5, 10, 25, 50, 100, 250 ms ...).
    """

    def __init__(self, histogram: Histogram, started_at: float) -> None:
        self._histogram = weakref.ref(histogram)
        # (epoch seconds, cumulative counts by bound): zeros at the start, then readings.
        self._readings: deque[tuple[float, list[tuple[float, float]]]] = deque()
        self._started_at = started_at

    def quantiles(self, now: float) -> UpstreamLatency:
        """The window's request count, p50 and p99 (seconds, rounded to 0.1 ms)."""
        counts = self._read()
        if not self._readings:
            self._readings.append((self._started_at, [(bound, 0.0) for bound, _ in counts]))
        while len(self._readings) > 1 and now - self._readings[1][0] >= LATENCY_WINDOW_S:
            self._readings.popleft()  # the next one is old enough to be the baseline
        since, before = self._readings[0]
        if now - self._readings[-1][0] >= _READ_EVERY_S:
            self._readings.append((now, counts))
        window = [
            (bound, count - was) for (bound, count), (_, was) in zip(counts, before, strict=False)
        ]
        total = window[-1][1] if window else 0.0
        return {
            "window_s": round(max(0.0, now - since), 1),
            "requests": int(total),
            "p50_s": _quantile(0.5, window),
            "p99_s": _quantile(0.99, window),
        }

    def _read(self) -> list[tuple[float, float]]:
        histogram = self._histogram()
        if histogram is None:
            return []
        return [
            (float(sample.labels["le"]), sample.value)
            for metric in histogram.collect()
            for sample in metric.samples
            if sample.name.endswith("_bucket")
        ]


_WINDOWS: weakref.WeakKeyDictionary[Histogram, LatencyWindow] = weakref.WeakKeyDictionary()


def latency_window(histogram: Histogram, started_at: float) -> LatencyWindow:
    """The window of ``histogram``: one per histogram, so one per relay (two relays in one
    process keep theirs apart), gone with it."""
    window = _WINDOWS.get(histogram)
    if window is None:
        window = _WINDOWS[histogram] = LatencyWindow(histogram, started_at)
    return window


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative ``buckets`` (upper bound, count), interpolated within
    its bucket; None when they count nothing."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return round(lower, 4)
            inside = count - below
            share = 1.0 if inside <= 0 else (rank - below) / inside
            return round(lower + (bound - lower) * share, 4)
        lower, below = bound, count
    return round(lower, 4)


def _conditions(
    outbox: OutboxStatus,
    delivery: DeliveryStatus | None,
    readings: Readings,
    warning_s: float | None,
    now: float,
) -> list[str]:
    found = []
    end = readings.oldest_end_at
    if end is not None and warning_s is not None and now - end > warning_s:
        found.append("expiring")
    if outbox["full"]:
        found.append("outbox_full")
    if delivery is not None and delivery["state"] in _STATE_CONDITIONS:
        found.append(delivery["state"])
    return found


def _file_bytes(path: Path) -> int:
    """The outbox's size on disk: the file and its write-ahead log."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):  # no WAL file, or the file just went
            total += part.stat().st_size
    return total


def _moment(epoch: float, now: float) -> Moment:
    """A time as ISO 8601 UTC, and how far it is from now (negative: in the past)."""
    return {"at": _iso(epoch), "in_s": round(epoch - now, 1)}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- for a person ---------------------------------------------------------------------


def render(document: Mapping[str, Any], url: str) -> str:
    """A readable summary of a ``/status`` document, ending with the verdict line."""
    outbox, delivery = document["outbox"], document["delivery"]
    lines = [
        f"ci-relay {document['version']} at {url}, up {span(document['uptime_s'])}",
        *_delivery_lines(delivery),
        f"pending       {_events(outbox['events'])}, {byte_size(outbox['bytes'])}"
        f" (limits {outbox['max_events']:,} events, {byte_size(outbox['max_bytes'])})",
        f"oldest        {_oldest(outbox)}",
        f"next expiry   {_expiry(outbox['next_expiry'])}",
        f"dead letters  {_dead_letters(document['dead_letters'])}",
        *_webhook_lines(document.get("webhooks", {})),
        *_problem_lines(document.get("problems", {})),
        f"outbox file   {outbox['path']} ({byte_size(outbox['file_bytes'])})",
        "",
        verdict(document),
    ]
    return "\n".join(lines)


def _delivery_lines(delivery: Mapping[str, Any] | None) -> list[str]:
    if delivery is None:
        return ["delivery      not running"]
    since = delivery["since"]
    lines = [
        f"delivery      {delivery['state']} for {span(-since['in_s'])}"
        f" (since {since['at']}) to {delivery['upstream']}",
    ]
    if delivery["next_try_in_s"] > 0:
        lines.append(f"next try      in {span(delivery['next_try_in_s'])}")
    last = delivery["last_delivery"]
    lines.append(
        "last delivery never"
        if last is None
        else f"last delivery {_events(last['events'])} {span(-last['in_s'])} ago ({last['at']})"
    )
    error = delivery["last_error"]
    if error is not None:
        lines.append(f"last error    {span(-error['in_s'])} ago ({error['at']}): {error['answer']}")
    return lines


def _webhook_lines(sources: Mapping[str, Any]) -> list[str]:
    """One line per source the relay serves: what its deliveries became since start."""
    lines = []
    for name, source in sources.items():
        if not source["enabled"]:
            continue
        outcomes = ", ".join(
            f"{count:,} {outcome}" for outcome, count in source["deliveries"].items()
        )
        lines.append(
            f"webhooks      {name}: {outcomes or 'none yet'}"
            f" ({_events(source['events_since_start'])} stored)"
        )
    return lines


# Conditions that end sooner, once the upstream is fixed, with ``ci-relay retry``.
_RETRYABLE = frozenset({"unauthorized", "rejecting", "misconfigured", "retrying"})


def _problem_lines(problems: Mapping[str, int]) -> list[str]:
    """The doctor's findings, when it has any (docs/doctor.md; the page shows where)."""
    found = [f"{count:,} {rule}" for rule, count in problems.items() if count]
    return [f"problems      {', '.join(found)} (see /ui, docs/doctor.md)"] if found else []


def verdict(document: Mapping[str, Any]) -> str:
    """``status: ok``, or each condition and what it means (the last line of ``render``)."""
    names = list(document.get("conditions", ()))
    if not names:
        return "status: ok"
    meanings = [f"{name}: {_BY_NAME[name].meaning}" for name in names if name in _BY_NAME]
    if _RETRYABLE.intersection(names):
        meanings.append("once the upstream is fixed, `ci-relay retry` tries at once")
    return "status: " + "; ".join(meanings)


def _oldest(outbox: Mapping[str, Any]) -> str:
    age = outbox["oldest_pending_age_s"]
    return "nothing pending" if age is None else f"received {span(age)} ago"


def _expiry(expiry: Mapping[str, Any] | None) -> str:
    if expiry is None:
        return "none (no pending event has ended)"
    return f"in {span(expiry['in_s'])} ({expiry['at']})"


def _dead_letters(by_reason: Mapping[str, int]) -> str:
    shown = [f"{reason} {count:,}" for reason, count in sorted(by_reason.items()) if count]
    return ", ".join(shown) if shown else "none"


def span(seconds: float) -> str:
    """A duration as a person reads it: 45s, 12m 3s, 5h 2m, 3d 4h."""
    seconds = max(0, round(seconds))
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if seconds >= size:
            rest = (seconds % size) // smaller_size
            return f"{seconds // size}{unit} {rest}{smaller}"
    return f"{seconds}s"


def _events(count: int) -> str:
    return f"{count:,} event" if count == 1 else f"{count:,} events"


def byte_size(count: int) -> str:
    """A size as a person reads it: 512 B, 3.4 KiB, 12.0 MiB."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"
