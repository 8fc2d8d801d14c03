"""The HTTP API: Datadog's answers for Datadog's requests, 202 only once durable."""

from __future__ import annotations

import gzip
import zlib

import orjson

from relay.samples import event, request
from tests.conftest import RunningRelay

JSON = {"Content-Type": "application/json"}


async def stored_bodies(relay: RunningRelay) -> list[bytes]:
    batch = await relay.outbox.next_batch(100_000, 1 << 40)
    return [e.body for e in batch]


async def test_single_event_is_accepted_and_stored(relay: RunningRelay) -> None:
    """A valid single-event request gets 202 {} and its event is in the outbox."""
    body = request(event("pipeline"))
    async with relay.client.post(relay.url, data=orjson.dumps(body), headers=JSON) as resp:
        assert (resp.status, await resp.read()) == (202, b"{}")
    assert [orjson.loads(b) for b in await stored_bodies(relay)] == [body["data"]]


async def test_gzip_body_is_accepted(relay: RunningRelay) -> None:
    """A gzip-encoded body is decoded and stored as the original event."""
    body = request(event("job"))
    headers = JSON | {"Content-Encoding": "gzip"}
    data = gzip.compress(orjson.dumps(body))
    async with relay.client.post(relay.url, data=data, headers=headers) as resp:
        assert resp.status == 202
    assert [orjson.loads(b) for b in await stored_bodies(relay)] == [body["data"]]


async def test_deflate_body_is_accepted(relay: RunningRelay) -> None:
    """A deflate-encoded (zlib) body is decoded and stored."""
    body = request(event("step"))
    headers = JSON | {"Content-Encoding": "deflate"}
    async with relay.client.post(
        relay.url, data=zlib.compress(orjson.dumps(body)), headers=headers
    ) as resp:
        assert resp.status == 202
    assert len(await stored_bodies(relay)) == 1
