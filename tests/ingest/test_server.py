"""The ingest HTTP contract over real HTTP: Datadog's answers, all or nothing, 202 once stored."""

from __future__ import annotations

import asyncio
import gzip
import io
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.config import OutboxSettings
from relay.contract.intake import PIPELINE_PATH
from relay.testing.samples import LEVELS, event, request
from tests.helpers import JSON, RunningRelay, serving


@dataclass(frozen=True)
class Answer:
    """What the relay answered: status, headers and raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def details(self) -> list[str]:
        """The detail of each error entry, after checking the body has Datadog's error shape."""
        document = orjson.loads(self.body)
        assert ["errors"] == list(document)
        entries = document["errors"]
        assert entries, "an error answer lists at least one error"
        for entry in entries:
            assert {"status", "title", "detail"} == set(entry)
            assert str(self.status) == entry["status"]
            assert isinstance(entry["detail"], str)
        return [entry["detail"] for entry in entries]


async def send(
    client: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
    skip_auto_headers: tuple[str, ...] = (),
) -> Answer:
    """Send ``body`` (bytes or a file as is, anything else as JSON) and read the answer."""
    as_is = isinstance(body, bytes | io.BytesIO) or body is None
    data = body if as_is else orjson.dumps(body)
    async with client.request(
        method,
        url,
        data=data,
        headers=JSON if headers is None else headers,
        skip_auto_headers=skip_auto_headers,
    ) as resp:
        return Answer(resp.status, resp.headers.copy(), await resp.read())


async def post(relay: RunningRelay, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
    """POST ``body`` to the relay's pipeline path."""
    return await send(relay.client, relay.url, body, headers)


async def stored(relay: RunningRelay) -> list[Any]:
    """Every event in the outbox, oldest first, decoded."""
    batch = await relay.outbox.next_batch(100_000, 1 << 40)
    return [orjson.loads(e.body) for e in batch]


def assert_error(answer: Answer, status: int, title: str) -> list[str]:
    """Check ``answer`` is a Datadog error of ``status``/``title`` in JSON; its details."""
    assert (status, "application/json") == (
        answer.status,
        answer.headers.get("Content-Type", "").split(";")[0],
    )
    assert {title} == {entry["title"] for entry in orjson.loads(answer.body)["errors"]}
    assert b"Traceback" not in answer.body
    return answer.details()


def assert_accepted(answer: Answer) -> None:
    """Check ``answer`` is exactly Datadog's 202 ``{}``."""
    assert (202, b"{}") == (answer.status, answer.body)


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LEVELS)
async def test_valid_event_gets_exactly_202_empty_object(relay: RunningRelay, kind: str) -> None:
    """A valid event of each level gets exactly 202 with body {} in JSON, and is stored."""
    original = event(kind)
    answer = await post(relay, request(original))
    assert_accepted(answer)
    assert "application/json" == answer.headers["Content-Type"].split(";")[0]
    assert [original] == await stored(relay)


async def test_content_type_with_charset_is_accepted(relay: RunningRelay) -> None:
    """application/json with a charset parameter is JSON."""
    answer = await post(
        relay, request(event("job")), {"Content-Type": "application/json; charset=utf-8"}
    )
    assert_accepted(answer)


async def test_1000_events_in_one_request_are_all_stored(relay: RunningRelay) -> None:
    """A request of 1000 events (about half a megabyte) gets 202 and stores all 1000 in order."""
    originals = [event(LEVELS[i % len(LEVELS)]) for i in range(1000)]
    assert_accepted(await post(relay, request(*originals)))
    assert originals == await stored(relay)


async def test_unknown_fields_and_values_survive_unchanged(relay: RunningRelay) -> None:
    """Unknown fields anywhere and every original value reach the outbox unchanged."""
    plus_two = datetime.now(timezone(timedelta(hours=2))) - timedelta(minutes=1)
    original = event(
        "stage",
        url="https://ci.example/stages/1",
        start=plus_two.strftime("%Y-%m-%dT%H:%M:%S.123456789+02:00"),
        custom={"nested": [1, 2.5, None, True, "x", 2**63 - 1], "empty": {}},
    )
    original["attributes"]["resource"]["git"]["signed"] = False
    original["attributes"]["extra"] = ["a", {"b": -1}]
    original["id"] = "client-side-id"
    body = orjson.dumps(request(original))
    assert_accepted(await post(relay, body))
    [stored_body] = [e.body for e in await relay.outbox.next_batch(10, 1 << 30)]
    assert original == orjson.loads(stored_body)
    assert orjson.dumps(original) == stored_body


async def test_gzip_and_deflate_bodies_are_decoded(relay: RunningRelay) -> None:
    """gzip, x-gzip, zlib deflate and raw deflate bodies are decoded and stored."""
    originals = [event("job"), event("step"), event("stage"), event("pipeline")]

    def raw_deflate(data: bytes) -> bytes:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()

    encodings: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
    ]
    for original, (name, compress) in zip(originals, encodings, strict=True):
        headers = JSON | {"Content-Encoding": name}
        assert_accepted(await post(relay, compress(orjson.dumps(request(original))), headers))
    assert originals == await stored(relay)


# --- 400 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"data": {', id="truncated"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    ],
)
async def test_invalid_json_gets_400(relay: RunningRelay, body: bytes) -> None:
    """A body that is not JSON gets Datadog's 400 with a detail saying so, and stores nothing."""
    [detail] = assert_error(await post(relay, body), 400, "Bad Request")
    assert "not valid JSON" in detail
    assert [] == await stored(relay)


@pytest.mark.parametrize(
    ("headers", "skip"),
    [
        pytest.param({"Content-Type": "text/plain"}, (), id="text-plain"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, (), id="form"),
        pytest.param({}, ("Content-Type",), id="missing"),
    ],
)
async def test_wrong_content_type_gets_400(
    relay: RunningRelay, headers: dict[str, str], skip: tuple[str, ...]
) -> None:
    """A valid JSON body sent with a content type other than application/json gets 400."""
    body = orjson.dumps(request(event("pipeline")))
    answer = await send(relay.client, relay.url, body, headers, skip_auto_headers=skip)
    [detail] = assert_error(answer, 400, "Bad Request")
    assert "Content-Type" in detail
    assert [] == await stored(relay)


async def test_more_than_1000_events_get_400(relay: RunningRelay) -> None:
    """A request of 1001 valid events gets 400 naming the 1000 limit, and stores nothing."""
    answer = await post(relay, request(*[event("step") for _ in range(1001)]))
    [detail] = assert_error(answer, 400, "Bad Request")
    assert "1000" in detail
    assert "1001" in detail
    assert [] == await stored(relay)


async def test_schema_problems_are_one_error_each_with_path(relay: RunningRelay) -> None:
    """Each schema problem is one error entry whose detail starts with its JSON path."""
    no_url = event("job")
    del no_url["attributes"]["resource"]["url"]
    body = request(event("stage", status="blocked"), event("pipeline"), no_url)
    details = assert_error(await post(relay, body), 400, "Bad Request")
    assert ["data[0].attributes.resource.status", "data[2].attributes.resource.url"] == [
        d.split(": ", 1)[0] for d in details
    ]
    assert "data[2].attributes.resource.url: Field required" == details[1]


async def test_single_event_problem_path_starts_at_data(relay: RunningRelay) -> None:
    """For a single-object data, problems are at data.<path> (no index)."""
    details = assert_error(
        await post(relay, request(event("step", status="canceled"))), 400, "Bad Request"
    )
    assert ["data.attributes.resource.status"] == [d.split(": ", 1)[0] for d in details]


async def test_corrupt_gzip_gets_400(relay: RunningRelay) -> None:
    """A gzip body that is not gzip data, or is cut short, gets 400 and stores nothing."""
    headers = JSON | {"Content-Encoding": "gzip"}
    whole = gzip.compress(orjson.dumps(request(event("job"))))
    for body in (
        b"\x1f\x8b\x08\x00garbage-not-deflate",
        b"plain, not gzip",
        whole[: len(whole) // 2],
    ):
        [detail] = assert_error(await post(relay, body, headers), 400, "Bad Request")
        assert "gzip" in detail
    assert [] == await stored(relay)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
    ],
)
@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"\x00", id="one-zero-byte"),
        pytest.param(gzip.compress(b'{"data": []}'), id="second-gzip-member"),
    ],
)
async def test_bytes_after_the_compressed_data_get_400(
    relay: RunningRelay, encoding: str, compress: Callable[[bytes], bytes], trailer: bytes
) -> None:
    """Bytes after the end of the gzip or deflate data (garbage, a second member) get 400."""
    body = compress(orjson.dumps(request(event("job")))) + trailer
    answer = await post(relay, body, JSON | {"Content-Encoding": encoding})
    [detail] = assert_error(answer, 400, "Bad Request")
    assert f"{len(trailer)} bytes after the end of the {encoding} data" in detail
    assert [] == await stored(relay)


# --- all or nothing ---------------------------------------------------------------------------


async def test_one_invalid_event_among_1000_stores_nothing(relay: RunningRelay) -> None:
    """999 valid events and 1 invalid one get 400 for that one and store none of the 1000."""
    events = [event(LEVELS[i % len(LEVELS)]) for i in range(999)]
    events.append(event("pipeline", status="succes"))
    details = assert_error(await post(relay, request(*events)), 400, "Bad Request")
    assert ["data[999].attributes.resource.status"] == [d.split(": ", 1)[0] for d in details]
    assert (0, 0) == (relay.outbox.counts.events, relay.outbox.counts.bytes)
    assert [] == await stored(relay)

    valid = [event("job"), event("step")]
    assert_accepted(await post(relay, request(*valid)))
    assert valid == await stored(relay)


# --- 413 / 415 --------------------------------------------------------------------------------


async def test_body_over_limit_gets_413(tmp_path: Path) -> None:
    """A body over max_body_bytes gets 413 and stores nothing; one under it is accepted."""
    small = request(event("pipeline"))
    limit = len(orjson.dumps(small)) + 10
    big = request(event("pipeline", name="x" * limit))
    async with serving(OutboxSettings(path=tmp_path / "o.db"), max_body_bytes=limit) as relay:
        [detail] = assert_error(await post(relay, big), 413, "Request Entity Too Large")
        assert str(limit) in detail
        assert [] == await stored(relay)
        assert_accepted(await post(relay, small))
        assert [small["data"]] == await stored(relay)


async def test_chunked_body_over_limit_gets_413(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) over max_body_bytes gets 413 too."""
    body = orjson.dumps(request(event("pipeline", name="x" * 4096)))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    async with serving(OutboxSettings(path=tmp_path / "o.db"), max_body_bytes=2048) as relay:
        async with relay.client.post(relay.url, data=chunks(), headers=JSON) as resp:
            answer = Answer(resp.status, resp.headers.copy(), await resp.read())
        assert_error(answer, 413, "Request Entity Too Large")
        assert [] == await stored(relay)


async def test_gzip_bomb_gets_413_and_relay_keeps_serving(relay: RunningRelay) -> None:
    """50 MB of whitespace gzipped to ~50 KB gets 413, not inflated whole; the relay serves on."""
    bomb = gzip.compress(b" " * 50_000_000, compresslevel=9)
    assert len(bomb) < 100_000
    headers = JSON | {"Content-Encoding": "gzip"}
    [detail] = assert_error(await post(relay, bomb, headers), 413, "Request Entity Too Large")
    assert "decompressed" in detail
    original = event("pipeline")
    assert_accepted(await post(relay, request(original)))
    assert [original] == await stored(relay)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
async def test_unsupported_content_encoding_gets_415(relay: RunningRelay, encoding: str) -> None:
    """A Content-Encoding other than gzip or deflate gets 415 naming it."""
    headers = JSON | {"Content-Encoding": encoding}
    answer = await post(relay, orjson.dumps(request(event("job"))), headers)
    [detail] = assert_error(answer, 415, "Unsupported Media Type")
    assert encoding in detail
    assert [] == await stored(relay)


# --- 404 / 405 / health ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/v2/ci/pipelines", "/api/v1/ci/pipeline", "/x"])
async def test_unknown_path_gets_404(relay: RunningRelay, path: str) -> None:
    """An unknown path gets Datadog's 404 shape."""
    answer = await send(relay.client, relay.base_url + path, request(event("job")))
    [detail] = assert_error(answer, 404, "Not Found")
    assert PIPELINE_PATH in detail


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_method_on_pipeline_path_gets_405_with_allow(
    relay: RunningRelay, method: str
) -> None:
    """A method other than POST on the pipeline path gets 405 with an Allow header naming POST."""
    answer = await send(relay.client, relay.url, None, {}, method=method)
    assert_error(answer, 405, "Method Not Allowed")
    assert "POST" in [m.strip() for m in answer.headers["Allow"].split(",")]


async def test_health_answers_200(relay: RunningRelay) -> None:
    """GET /health answers 200."""
    answer = await send(relay.client, relay.base_url + "/health", None, {}, method="GET")
    assert 200 == answer.status


# --- outbox full ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_events", "max_bytes"])
async def test_full_outbox_gets_503_and_keeps_earlier(tmp_path: Path, limit: str) -> None:
    """With max_events or max_bytes exactly filled, the next request gets 503 + Retry-After
    and stores nothing."""
    first = [event("pipeline", padding="p" * 600) for _ in range(2)]
    size = sum(len(orjson.dumps(e)) for e in first)
    bound = {"max_events": 2, "max_bytes": size}[limit]
    async with serving(OutboxSettings(path=tmp_path / "o.db", **{limit: bound})) as relay:
        for original in first:
            assert_accepted(await post(relay, request(original)))
        answer = await post(relay, request(event("step")))
        assert_error(answer, 503, "Service Unavailable")
        assert int(answer.headers["Retry-After"]) >= 1
        assert first == await stored(relay)
        assert (2, size) == (relay.outbox.counts.events, relay.outbox.counts.bytes)


async def test_request_that_only_partly_fits_is_refused_whole(tmp_path: Path) -> None:
    """A 2-event request when 1 event fits gets 503 and stores neither event."""
    settings = OutboxSettings(path=tmp_path / "o.db", max_events=3)
    async with serving(settings) as relay:
        first = [event("job"), event("stage")]
        assert_accepted(await post(relay, request(*first)))
        answer = await post(relay, request(event("step"), event("step")))
        assert_error(answer, 503, "Service Unavailable")
        assert "Retry-After" in answer.headers
        assert first == await stored(relay)
        last = event("pipeline")
        assert_accepted(await post(relay, request(last)))
        assert [*first, last] == await stored(relay)


# --- concurrency ------------------------------------------------------------------------------


async def test_50_concurrent_requests_are_all_stored_once(relay: RunningRelay) -> None:
    """50 concurrent single-event requests all get 202 and each event is stored exactly once."""
    originals = [event(LEVELS[i % len(LEVELS)]) for i in range(50)]
    answers = await asyncio.gather(*(post(relay, request(e)) for e in originals))
    assert [(202, b"{}")] * 50 == [(a.status, a.body) for a in answers]
    sent = sorted(orjson.dumps(e) for e in originals)
    assert sent == sorted(orjson.dumps(e) for e in await stored(relay))


# --- no tracebacks ----------------------------------------------------------------------------


async def test_no_answer_contains_a_traceback(relay: RunningRelay) -> None:
    """Hostile and malformed requests get Datadog-shaped 4xx answers, never a traceback."""
    gz = JSON | {"Content-Encoding": "gzip"}
    cases: list[tuple[str, Any, dict[str, str]]] = [
        (relay.url, b"[" * 100_000, JSON),
        (relay.url, b'{"data": [1, "x", null, []]}', JSON),
        (relay.url, b'{"data": {"attributes": {"resource": "pipeline"}}}', JSON),
        (relay.url, b'{"data": {"attributes": {"resource": {"level": ["pipeline"]}}}}', JSON),
        (relay.url, b'{"data": {"attributes": {"resource": {"level": {}}}}}', JSON),
        (relay.url, orjson.dumps(request(event("job", start=None, end=[], status={}))), JSON),
        (relay.url, orjson.dumps({"data": [None] * 500}), JSON),
        (relay.url, b"\x00\x01\x02", JSON),
        (relay.url, b"\x1f\x8b" + b"\xff" * 64, gz),
        (relay.url, b"", gz),
        (relay.url, b"{}", JSON | {"Content-Encoding": "gzip, br"}),
        (relay.url, b"{}", {"Content-Type": "application/json; charset=latin-1"}),
        (relay.base_url + "/../../etc/passwd", b"{}", JSON),
    ]
    for url, body, headers in cases:
        answer = await send(relay.client, url, body, headers)
        assert 400 <= answer.status < 500, (url, body[:40], answer.status, answer.body[:200])
        assert b"Traceback" not in answer.body
        assert b'File "' not in answer.body
        answer.details()
    assert [] == await stored(relay)


# --- one JSON parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param(b'"\\ud800"', "surrogate", id="lone-surrogate"),
        pytest.param(b"1e400", "infinity", id="overflow"),
        pytest.param(b"[" * 1000 + b"]" * 1000, "nested", id="deep"),
    ],
)
async def test_bad_json_beside_a_long_number_gets_400(
    relay: RunningRelay, raw: bytes, says: str
) -> None:
    """A lone surrogate, 1e400 or deep nesting gets 400 even beside a 20-digit number."""
    original = event("job", metrics=["m:12345678901234567890"], x="RAW")
    body = orjson.dumps(request(original)).replace(b'"RAW"', raw)
    [detail] = assert_error(await post(relay, body), 400, "Bad Request")
    assert says in detail
    assert [] == await stored(relay)


# --- bounded work per request ------------------------------------------------------------------

# A /health answer slower than this during a bad request means the relay stalled on it.
HEALTH_BOUND_S = 2.0


async def test_health_answers_while_a_bad_5_mib_body_is_refused(relay: RunningRelay) -> None:
    """While a 5 MiB body of 2.6 million bad tags is refused, every /health answers in 2 s."""
    shell = orjson.dumps(request(event("job", tags=["TAGS"])))
    body = shell.replace(b'"TAGS"', b",".join([b"1"] * 2_600_000))
    assert len(body) <= 5 * 1024 * 1024
    # A file-like body: aiohttp warns that raw bytes this large would block the client.
    refusal = asyncio.create_task(post(relay, io.BytesIO(body)))
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    answered_meanwhile = 0
    while not refusal.done():
        start = loop.time()
        health = await send(relay.client, relay.base_url + "/health", None, {}, method="GET")
        latencies.append(loop.time() - start)
        assert 200 == health.status
        answered_meanwhile += not refusal.done()
    details = assert_error(await refusal, 400, "Bad Request")
    assert 101 == len(details)
    assert answered_meanwhile >= 1
    assert [] == [latency for latency in latencies if latency > HEALTH_BOUND_S]
    assert [] == await stored(relay)
