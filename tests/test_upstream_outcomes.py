"""The one place that maps an upstream answer to an outcome the flusher acts on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from relay.upstream import (
    Delivered,
    Outcome,
    Reject,
    Retry,
    Split,
    Unauthorized,
    outcome_of,
    request_body,
)

DD_ERROR = b'{"errors":[{"status":"400","title":"Bad Request","detail":"invalid event 7"}]}'


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (202, {}, b"{}", Delivered()),
        (200, {}, b"", Delivered()),
        # the upstream's detail travels to the dead letter
        (400, {}, DD_ERROR, Reject(400, "invalid event 7")),
        (422, {}, b"unprocessable", Reject(422, "unprocessable")),
        (413, {}, b"", Split("HTTP 413")),
        (401, {}, b'{"errors":["Unauthorized"]}', Unauthorized(401, "Unauthorized")),
        (403, {}, b'{"errors":[{"detail":"Forbidden"}]}', Unauthorized(403, "Forbidden")),
        (408, {}, b"", Retry("408: HTTP 408")),
        (500, {}, b"boom", Retry("500: boom")),
        (503, {"Retry-After": "12"}, b"", Retry("503: HTTP 503", 12.0)),
        # 429: Retry-After first, else X-RateLimit-Reset (seconds until the limit resets)
        (429, {"Retry-After": "3"}, b"", Retry("429 rate limited: HTTP 429", 3.0)),
        (429, {"X-RateLimit-Reset": "40"}, b"", Retry("429 rate limited: HTTP 429", 40.0)),
        (429, {}, b"", Retry("429 rate limited: HTTP 429", None)),
        (429, {"Retry-After": "soon"}, b"", Retry("429 rate limited: HTTP 429", None)),
        # an unexpected status (a proxy's 404) keeps the events
        (404, {}, b"not found", Retry("404: not found")),
    ],
)
def test_outcome_table(
    status: int, headers: dict[str, str], body: bytes, expected: Outcome
) -> None:
    """Each upstream answer maps to exactly one outcome."""
    assert expected == outcome_of(status, headers, body)


def test_retry_after_as_http_date() -> None:
    """A Retry-After given as an HTTP date becomes the seconds until then."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    outcome = outcome_of(429, {"Retry-After": when}, b"")
    assert isinstance(outcome, Retry)
    assert outcome.after_s is not None
    assert 25 <= outcome.after_s <= 31


def test_request_body_keeps_events_byte_for_byte() -> None:
    """The upstream body wraps the stored events in data without re-encoding them."""
    events = [b'{"b":1,"a":2.50}', b'{"x":"\\u00e9"}']
    assert b'{"data":[{"b":1,"a":2.50},{"x":"\\u00e9"}]}' == request_body(events)
