"""The one rule for a full outbox: what the writer refuses, /ready and /status report."""

from __future__ import annotations

import pytest

from relay.config import OutboxSettings
from relay.store.writer import Limit, OutboxCounts, limit_passed

LIMITS = OutboxSettings(max_events=10, max_bytes=2048)


@pytest.mark.parametrize(
    ("events", "size", "passed"),
    [
        (10, 2048, None),  # at both limits: still stored
        (11, 0, "max_events"),
        (0, 2049, "max_bytes"),
        (11, 2049, "max_events"),  # the events' limit is named first
    ],
)
def test_a_request_is_stored_unless_it_passes_a_limit(
    events: int, size: int, passed: Limit | None
) -> None:
    """The writer stores a request unless the outbox would then hold more than a limit."""
    assert passed == limit_passed(events, size, LIMITS)


@pytest.mark.parametrize(
    ("events", "size", "full"),
    [
        (9, 2047, None),  # room for one more event of one byte
        (10, 0, "max_events"),
        (0, 2048, "max_bytes"),
        (10, 2048, "max_events"),
    ],
)
def test_full_means_no_room_for_one_more_event(events: int, size: int, full: Limit | None) -> None:
    """The outbox is full (503 for every request) once the smallest one would pass a limit."""
    assert full == OutboxCounts(events=events, bytes=size).full(LIMITS)
