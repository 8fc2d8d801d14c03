"""An event the relay accepted, as the store takes it: the runner's bytes and the end.

Validation (``relay.contract.schema``) makes one per valid event and the store appends them
as they are, so the store knows nothing of the models that validate, and the ingest path
makes no other object per event.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """One valid event: its original JSON, and its end (epoch seconds) if it has one."""

    body: bytes
    end_at: float | None
