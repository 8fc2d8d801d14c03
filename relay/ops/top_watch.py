"""What ``ci-relay top`` remembers between frames: readings of ``/status``, rates, baselines.

The relay publishes counters since its start (``relay.ops.status``); a rate is the
difference of a counter between two readings over the time between them. ``Watch`` keeps
the readings of about the last minute: "last second" is the latest two readings (an
``--interval`` apart), "last minute" the latest and the newest reading at least a minute
older (until there is one, the oldest kept, and the span says how long that is). A relay
that restarted (another ``started_at``) counts from 0 again: the readings before it are
dropped rather than giving negative rates.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RATE_WINDOW_S = 60.0

Document = Mapping[str, Any]


@dataclass(frozen=True)
class Reading:
    """One attempt to read the relay: its ``/status`` document, or why there is none."""

    at: float  # time.monotonic() when the answer came
    wall: float  # time.time() then
    document: Document | None  # None: unreachable
    error: str = ""  # why unreachable
    # The recent history's pipelines, newest first; None where the relay serves none.
    pipelines: Sequence[Document] | None = None
    pipelines_read: float | None = None  # wall time they were read (they are read seldom)


@dataclass(frozen=True)
class Rate:
    """Events (or requests) a second over ``span_s`` seconds; None before two readings."""

    per_s: float | None
    span_s: float


def counters(document: Document) -> dict[str, float]:
    """The counters since start that rates are computed from, by name."""
    found: dict[str, float] = {"accepted": document["outbox"]["accepted_since_start"]}
    delivery = document.get("delivery")
    if delivery is not None:
        found["delivered"] = delivery["delivered_since_start"]
        found["retries"] = delivery["retries_since_start"]
        upstream = delivery.get("upstream_requests", {}).get("requests_since_start", {})
        for outcome, by_class in upstream.items():
            found[f"upstream:{outcome}"] = sum(by_class.values())
    ingest = document.get("ingest", {})
    for reason, count in ingest.get("refused_since_start", {}).items():
        found[f"refused:{reason}"] = count
    for source, hooks in document.get("webhooks", {}).items():
        found[f"webhooks:{source}"] = sum(hooks["deliveries"].values())
    return found


@dataclass
class Watch:
    """The view's memory: the latest good reading, the counters of the last minute, the
    dead letters when the view opened, and since when the relay has not answered."""

    url: str
    interval_s: float
    opened_wall: float = field(default_factory=time.time)
    latest: Reading | None = None  # the latest reading with a document
    unreachable_since: float | None = None  # wall time of the first failure in a row
    error: str = ""
    dead_letters_at_open: dict[str, int] | None = None
    _samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def add(self, reading: Reading) -> None:
        """Take one reading: a document moves the rates on, a failure starts (or goes on
        with) "unreachable since"."""
        if reading.document is None:
            if self.unreachable_since is None:
                self.unreachable_since = reading.wall
            self.error = reading.error
            return
        self.unreachable_since, self.error = None, ""
        document = reading.document
        previous = self.document
        if previous is not None and previous["started_at"] != document["started_at"]:
            self._samples.clear()  # a new relay process: its counters start at 0
        if self.dead_letters_at_open is None:
            self.dead_letters_at_open = dict(document["dead_letters"])
        self.latest = reading
        self._samples.append((reading.at, counters(document)))
        while len(self._samples) > 2 and reading.at - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()

    @property
    def document(self) -> Document | None:
        """The latest document read, however old."""
        return None if self.latest is None else self.latest.document

    def rate(self, name: str, *, minute: bool = False) -> Rate:
        """``name``'s rate over the last reading's interval, or over the last minute."""
        if len(self._samples) < 2:
            return Rate(None, 0.0)
        at, now = self._samples[-1]
        was_at, was = self._samples[0] if minute else self._samples[-2]
        span = at - was_at
        if span <= 0:
            return Rate(None, 0.0)
        return Rate((now.get(name, 0.0) - was.get(name, 0.0)) / span, span)

    def names(self, prefix: str) -> list[str]:
        """The counters named ``prefix:...`` that the latest reading has, without the prefix."""
        if not self._samples:
            return []
        latest = self._samples[-1][1]
        return sorted(name.split(":", 1)[1] for name in latest if name.startswith(prefix + ":"))

    def dead_letter_change(self, reason: str) -> int:
        """Dead letters of ``reason`` now less when the view opened."""
        document = self.document
        if document is None or self.dead_letters_at_open is None:
            return 0
        now: int = document["dead_letters"].get(reason, 0)
        return now - self.dead_letters_at_open.get(reason, 0)
