"""The one place that maps an upstream answer to an outcome the flusher acts on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from relay.delivery.upstream import (
    Delivered,
    Misconfigured,
    Outcome,
    Reject,
    Retry,
    Split,
    Unauthorized,
    outcome_of,
)

RATE_LIMITED = "429 rate limited: HTTP 429"
MOVED = Misconfigured(301, "redirect to https://x.example/p", "https://x.example/p")
DD_ERROR = b'{"errors":[{"status":"400","title":"Bad Request","detail":"invalid event 7"}]}'


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (202, {}, b"{}", Delivered()),
        (200, {}, b"", Delivered()),
        # the upstream's detail travels to the dead letter
        (400, {}, DD_ERROR, Reject(400, "invalid event 7")),
        (422, {}, b"unprocessable", Reject(422, "unprocessable")),
        (413, {}, b"", Split(413, "HTTP 413")),
        (401, {}, b'{"errors":["Unauthorized"]}', Unauthorized(401, "Unauthorized")),
        (403, {}, b'{"errors":[{"detail":"Forbidden"}]}', Unauthorized(403, "Forbidden")),
        # 408 and 5xx may come from the events themselves: a batch that keeps failing is
        # isolated
        (408, {}, b"", Retry("408: HTTP 408", None, 408, "HTTP 408", batch_suspect=True)),
        (500, {}, b"boom", Retry("500: boom", None, 500, "boom", batch_suspect=True)),
        (503, {"Retry-After": "12"}, b"", Retry("503: HTTP 503", 12.0, 503, "HTTP 503", True)),
        # any wait is reported as asked; the flusher caps it
        (
            503,
            {"Retry-After": "90000"},
            b"",
            Retry("503: HTTP 503", 90000.0, 503, "HTTP 503", True),
        ),
        # 429: Retry-After first, else X-RateLimit-Reset (seconds until the limit resets)
        (429, {"Retry-After": "3"}, b"", Retry(RATE_LIMITED, 3.0, 429, "HTTP 429")),
        (429, {"X-RateLimit-Reset": "40"}, b"", Retry(RATE_LIMITED, 40.0, 429, "HTTP 429")),
        (429, {}, b"", Retry(RATE_LIMITED, None, 429, "HTTP 429")),
        (429, {"Retry-After": "soon"}, b"", Retry(RATE_LIMITED, None, 429, "HTTP 429")),
        # an unexpected status keeps the events
        (502, {}, b"bad gateway", Retry("502: bad gateway", None, 502, "bad gateway", True)),
        (418, {}, b"teapot", Retry("418: teapot", None, 418, "teapot")),
        # a wrong URL, method or content type: misconfiguration, retried with backoff
        (404, {}, b"not found", Misconfigured(404, "not found")),
        (405, {}, b"", Misconfigured(405, "HTTP 405")),
        (415, {}, b"", Misconfigured(415, "HTTP 415")),
        # a redirect is never followed
        (301, {"Location": "https://x.example/p"}, b"", MOVED),
        (307, {}, b"", Misconfigured(307, "redirect to (no Location)", None)),
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
