"""Records for the history's tests, with times given as seconds after ``T0``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay.history.records import Fate, Record

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z


def at(offset_s: float | None) -> float | None:
    """``T0 + offset_s`` (``None`` stays ``None``)."""
    return None if offset_s is None else T0 + offset_s


def event(
    level: str,
    id: str,
    start: float | None,
    end: float | None,
    *,
    pipeline_id: str = "p1",
    pipeline_name: str | None = "ci",
    name: str | None = None,
    status: str = "success",
    queue_time_ms: int | None = None,
    stage_id: str | None = None,
    stage_name: str | None = None,
    job_id: str | None = None,
    job_name: str | None = None,
    partial_retry: bool = False,
    fate: Fate = "delivered",
    reason: str | None = None,
    received: float | None = None,
) -> Record:
    """One record; ``start``, ``end`` and ``received`` are seconds after ``T0``. It is received
    a second after its end (its start for one without an end) unless ``received`` says."""
    if received is None:
        received = (end if end is not None else start or 0.0) + 1.0
    return Record(
        level=level,
        id=id,
        pipeline_id=pipeline_id,
        pipeline_name=pipeline_name,
        name=name if name is not None else id,
        status=status,
        start=at(start),
        end=at(end),
        queue_time_ms=queue_time_ms,
        url=f"https://ci.example/{id}",
        error="boom" if status == "error" else None,
        stage_id=stage_id,
        stage_name=stage_name,
        job_id=job_id,
        job_name=job_name,
        partial_retry=partial_retry,
        fate=fate,
        reason=reason,
        received_at=T0 + received,
    )


def pipeline(
    start: float | None = 0.0, end: float | None = 100.0, *, id: str = "p1", **fields: Any
) -> Record:
    """A pipeline event named ``ci`` (``pipeline_name`` unset, as the store gives it)."""
    fields.setdefault("name", "ci")
    if fields.get("status") == "running":
        end = None
    return event("pipeline", id, start, end, pipeline_id=id, pipeline_name=None, **fields)


def stage(id: str, start: float | None, end: float | None, **fields: Any) -> Record:
    return event("stage", id, start, end, **fields)


def job(id: str, start: float | None, end: float | None, **fields: Any) -> Record:
    return event("job", id, start, end, **fields)


def step(id: str, start: float | None, end: float | None, **fields: Any) -> Record:
    return event("step", id, start, end, **fields)


def copy(record: Record, **changes: Any) -> Record:
    """The record with some fields changed (times as seconds after ``T0`` too)."""
    for key in ("start", "end", "received_at"):
        if key in changes and changes[key] is not None:
            changes[key] = T0 + changes[key]
    return replace(record, **changes)
