"""The intake's contract: the request envelope and the error body, both ways."""

from __future__ import annotations

import orjson
import pytest

from relay.contract.intake import ENVELOPE_BYTES, error_body, error_detail, request_body


def test_request_body_keeps_events_byte_for_byte() -> None:
    """The upstream body wraps the stored events in data without re-encoding them."""
    events = [b'{"b":1,"a":2.50}', b'{"x":"\\u00e9"}']
    assert b'{"data":[{"b":1,"a":2.50},{"x":"\\u00e9"}]}' == request_body(events)


def test_envelope_bytes_is_what_request_body_adds_around_the_events() -> None:
    """ENVELOPE_BYTES is the length of a request body with no events in it."""
    assert len(b'{"data":[]}') == ENVELOPE_BYTES == len(request_body([]))


def test_error_body_round_trips_through_error_detail() -> None:
    """What the relay answers in Datadog's shape, error_detail reads back, details joined."""
    body = error_body(400, ["data[0].status: bad", "data[1].name: missing"])
    assert {
        "errors": [
            {"status": "400", "title": "Bad Request", "detail": "data[0].status: bad"},
            {"status": "400", "title": "Bad Request", "detail": "data[1].name: missing"},
        ]
    } == orjson.loads(body)
    assert "data[0].status: bad; data[1].name: missing" == error_detail(400, body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"upstream connect error", "upstream connect error"),
        (b"", "HTTP 502"),
        (b'{"errors":["Forbidden"]}', "Forbidden"),
        (b'{"errors":[{"title":"Gateway Timeout"}]}', "Gateway Timeout"),
    ],
)
def test_error_detail_of_other_shapes(body: bytes, expected: str) -> None:
    """A body not in Datadog's shape gives its text, or the status when it is empty."""
    assert expected == error_detail(502, body)
