"""The recent history's rows read back as records (``relay.history.records.Record``).

A record's shown fields are one JSON array (``queries.RECORD_FIELDS``'s order), made by the
transaction that settled the event; here it becomes a ``Record``, its start parsed from the
event's RFC3339 text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from relay.history.records import Record
from relay.store import queries


def as_record(row: Sequence[Any]) -> Record:
    """A history row (fate, reason, received_at, end_at, the fields array) as a Record."""
    fate, reason, received_at, end_at, fields = row
    named = dict(zip(queries.RECORD_FIELDS, orjson.loads(fields), strict=True))
    error = named["error.message"] or named["error.type"]
    return Record(
        level=named["level"],
        id=_text(named["unique_id"] or named["id"]) or "",
        pipeline_id=_text(named["pipeline_unique_id"] or named["unique_id"]) or "",
        pipeline_name=_text(named["pipeline_name"]),
        name=_text(named["name"]) or "",
        status=_text(named["status"]) or "",
        start=_epoch(named["start"]),
        end=end_at,
        queue_time_ms=named["queue_time"] if isinstance(named["queue_time"], int) else None,
        url=_text(named["url"]),
        error=str(error)[:_MAX_ERROR_SHOWN] if error else None,
        stage_id=_text(named["stage_id"]),
        stage_name=_text(named["stage_name"]),
        job_id=_text(named["job_id"]),
        job_name=_text(named["job_name"]),
        partial_retry=named["partial_retry"] in (1, True),
        fate=fate,
        reason=reason,
        received_at=received_at,
    )


# A record's error is shown, not kept whole: the dead letter or the upstream has all of it.
_MAX_ERROR_SHOWN = 500


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _epoch(value: Any) -> float | None:
    """An RFC3339 time (as the intake takes it) in epoch seconds; None if it is none."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
