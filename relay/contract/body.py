"""Reading a request body as JSON: one strict parser for every body, and each event's bytes.

The rules (docs/parsing.md lists them for runners):

- The body is one RFC 8259 JSON text in UTF-8, read by orjson alone, whatever it holds:
  a byte order mark, a lone surrogate escape (``"\\ud800"``), a number too large for a
  double (``1e400``), ``NaN`` or ``Infinity``, trailing bytes or invalid UTF-8 are refused.
- Arrays and objects nest at most ``MAX_DEPTH`` levels, the body itself being level 1.
- Each event is stored as the exact bytes the runner sent for it, sliced from the body, so
  an integer of any size, a number's form and a string's escapes reach the upstream as
  sent. Validation reads orjson's values, where an integer beyond 64 bits is a float.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from relay.contract.exceptions import RelayError

MAX_DEPTH = 512

# orjson refuses documents nested deeper than 1024 levels (a documented limit). Parsing the
# body inside (1024 - MAX_DEPTH) arrays makes that limit MAX_DEPTH for the body, in the
# same single pass, rather than walking the parsed document again to measure its depth.
_ORJSON_DEPTH = 1024
_PADDING = _ORJSON_DEPTH - MAX_DEPTH
_OPEN = b"[" * _PADDING
_CLOSE = b"]" * _PADDING


class NotJSON(RelayError, ValueError):
    """The body is not a JSON text the relay accepts; the message says why."""


def loads(body: bytes) -> Any:
    """The JSON value of ``body``, or NotJSON."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        # Too few brackets to nest past the limit (most bodies): no padding to parse.
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise NotJSON(_why(body)) from None
    try:
        value = orjson.loads(_OPEN + body + _CLOSE)
    except orjson.JSONDecodeError:
        raise NotJSON(_why(body)) from None
    for _ in range(_PADDING):
        # A body such as `1],[2` balances the brackets around it: then a level has 2 items.
        if type(value) is not list or len(value) != 1:
            raise NotJSON(_why(body))
        value = value[0]
    return value


def _why(body: bytes) -> str:
    """Why ``body`` failed to parse inside the padding: its own error, or its depth."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    return f"arrays and objects are nested more than {MAX_DEPTH} levels deep"


class _Envelope(msgspec.Struct):
    # Duplicate keys: msgspec keeps the last, as orjson does, so both read the same data.
    data: msgspec.Raw


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def event_bytes(body: bytes) -> list[bytes]:
    """The original bytes of each item of ``data`` (or of ``data`` itself if an object).

    Call only on a body ``loads`` accepted: msgspec finds the spans but checks less.
    """
    data = _ENVELOPE.decode(body).data
    if memoryview(data)[:1].tobytes() == b"[":
        return [bytes(item) for item in _ITEMS.decode(data)]
    return [bytes(data)]
