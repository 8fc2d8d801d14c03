"""One event of the recent history, as the store gives it back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Fate = Literal["pending", "delivered", "dead_lettered", "not_sent"]
LEVELS = ("pipeline", "stage", "job", "step")


@dataclass(frozen=True, slots=True)
class Record:
    """What the history keeps of one event (times in epoch seconds).

    ``id`` is a pipeline's ``unique_id`` or a child's ``id``; ``pipeline_id`` is the
    pipeline a child names (``pipeline_unique_id``), a pipeline's own ``unique_id`` for a
    pipeline. ``fate``: still in the outbox, delivered (2xx), dead-lettered (with its
    ``reason``), or not sent (a dry run). ``received_at`` is when the relay took it.
    """

    level: str
    id: str
    pipeline_id: str
    pipeline_name: str | None
    name: str
    status: str
    start: float | None
    end: float | None
    queue_time_ms: int | None
    url: str | None
    error: str | None
    stage_id: str | None
    stage_name: str | None
    job_id: str | None
    job_name: str | None
    partial_retry: bool
    fate: Fate
    reason: str | None
    received_at: float
