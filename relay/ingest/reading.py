"""A request's body as the relay reads it: JSON only, bounded before and after decoding.

Ingest and the webhook routes read bodies alike: the Content-Type must be JSON, the size
is bounded as sent and as decompressed (no zip bombs), and each refusal says why with the
status the client gets.
"""

from __future__ import annotations

import zlib

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from relay.contract.exceptions import RelayError


class Refused(RelayError):
    """The request is refused with ``status``; ``details`` say why."""

    def __init__(self, status: int, *details: str) -> None:
        super().__init__(details[0])
        self.status = status
        self.details = details


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body without its Content-Encoding, at most ``limit`` bytes; Refused otherwise."""
    if request.content_type != "application/json":
        raise Refused(
            400, f"Content-Type must be application/json, not {request.content_type or 'missing'}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, f"body of {request.content_length} bytes exceeds the {limit} limit")
    try:
        raw = await request.read()  # bounded by client_max_size, which relay.app sets to limit
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"body exceeds the {limit} byte limit") from None
    except RequestPayloadError as exc:  # a bad chunk, a wrong length: the client's fault
        raise Refused(400, f"the request body is not valid HTTP: {exc}") from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    return _decode(raw, encoding, limit)


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, refused past ``limit`` bytes (no zip bombs)."""
    if encoding in ("identity", ""):
        return raw
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # HTTP's deflate is zlib-wrapped, but some clients send a raw deflate stream.
        wbits = zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise Refused(415, f"Content-Encoding {encoding} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise Refused(400, f"body is not valid {encoding} data: {exc}") from None
    if len(body) > limit:
        raise Refused(413, f"decompressed body exceeds the {limit} byte limit")
    if not inflater.eof:
        raise Refused(400, f"body is truncated {encoding} data")
    # A second gzip member or garbage after the first: refused, never silently dropped.
    extra = len(inflater.unused_data) + len(inflater.unconsumed_tail)
    if extra:
        raise Refused(400, f"body has {extra} bytes after the end of the {encoding} data")
    return body
