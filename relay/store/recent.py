"""The recent history's rows read back as records (``relay.history.records.Record``).

A record holds a copy of the settled event until the upkeep compacts it into its shown
fields, one JSON array in ``queries.RECORD_FIELDS``'s order; either way it becomes a
``Record`` here, its start parsed from the event's RFC3339 text. Pending events are read
from their bodies the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from relay.history.records import Record
from relay.store import queries


def as_record(row: Sequence[Any]) -> Record | None:
    """A history row (fate, reason, received_at, end_at, fields, body) as a Record: from its
    compacted fields, or from the event's body; None when the body is no event."""
    fate, reason, received_at, end_at, fields, body = row
    named = _from_fields(fields) if fields is not None else _from_body(body)
    if named is None or not isinstance(named["level"], str):
        return None
    error = named["error.message"] or named["error.type"]
    return Record(
        level=named["level"],
        id=_text(named["unique_id"] or named["id"]) or "",
        pipeline_id=_text(named["pipeline_unique_id"] or named["unique_id"]) or "",
        pipeline_name=_text(named["pipeline_name"]),
        name=_text(named["name"]) or "",
        status=_text(named["status"]) or "",
        start=_epoch(named["start"]),
        end=_number(end_at),
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
        received_at=_number(received_at) or 0.0,
    )


def as_records(rows: Sequence[Sequence[Any]]) -> list[Record]:
    """The rows that are events, as Records."""
    return [record for row in rows if (record := as_record(row)) is not None]


def _from_fields(fields: str) -> dict[str, Any]:
    return dict(zip(queries.RECORD_FIELDS, orjson.loads(fields), strict=True))


def _from_body(body: bytes | str | None) -> dict[str, Any] | None:
    """The same fields read from the event's JSON (a copy not compacted yet, a pending one)."""
    try:
        event = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return None
    attributes = event.get("attributes") if isinstance(event, dict) else None
    resource = attributes.get("resource") if isinstance(attributes, dict) else None
    if not isinstance(resource, dict):
        return None
    return {path: _at(resource, path) for path in queries.RECORD_FIELDS}


def _at(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# A record's error is shown, not kept whole: the dead letter or the upstream has all of it.
_MAX_ERROR_SHOWN = 500


def _number(value: Any) -> float | None:
    """A stored time as a number; None for anything else (a row another program wrote)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
