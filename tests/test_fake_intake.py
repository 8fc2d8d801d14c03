"""Tests for the fake Datadog intake that the relay's delivery tests send to."""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fake_intake import (
    PIPELINE_PATH,
    Accept,
    Answer,
    Drop,
    FakeIntake,
    Flaky,
    RateLimited,
    RejectEvents,
    Slow,
    Status,
    TooLarge,
)

API_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def intake() -> AsyncIterator[FakeIntake]:
    """A started intake answering 202 by default, closed after the test."""
    async with FakeIntake() as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test (before the intake, which it depends on)."""
    async with aiohttp.ClientSession() as client:
        yield client


def pipeline_event(unique_id: str) -> dict[str, Any]:
    """A pipeline-level CI Visibility event."""
    return {
        "type": "cipipeline_resource_request",
        "attributes": {
            "provider_name": "github",
            "resource": {
                "level": "pipeline",
                "unique_id": unique_id,
                "name": "build",
                "url": "https://ci.example/p/1",
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-01-01T00:01:00Z",
                "status": "success",
                "partial_retry": False,
            },
        },
    }


def job_event(job_id: str) -> dict[str, Any]:
    """A job-level CI Visibility event."""
    return {
        "type": "cipipeline_resource_request",
        "attributes": {
            "provider_name": "github",
            "resource": {"level": "job", "id": job_id, "name": "test", "status": "error"},
        },
    }


def payload(*events: dict[str, Any]) -> bytes:
    """A request body with these events under data."""
    return orjson.dumps({"data": list(events)})


async def post(
    session: aiohttp.ClientSession,
    intake: FakeIntake,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST a body to the intake's pipeline path; return status, headers and response body."""
    sent = {"DD-API-KEY": API_KEY, "Content-Type": "application/json"}
    sent.update(headers or {})
    async with session.post(
        intake.url + PIPELINE_PATH, data=body, headers=sent, timeout=client_timeout
    ) as response:
        return response.status, response.headers, await response.read()


async def statuses(session: aiohttp.ClientSession, intake: FakeIntake, n: int) -> list[int]:
    """The statuses of n sequential single-event posts."""
    result = []
    for i in range(n):
        status, _, _ = await post(session, intake, payload(pipeline_event(f"p{i}")))
        result.append(status)
    return result


def error_details(body: bytes) -> list[str]:
    """The detail strings of a Datadog error body."""
    return [error["detail"] for error in orjson.loads(body)["errors"]]


def assert_no_server_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Fail if aiohttp logged a warning or an error (e.g. an unhandled exception)."""
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


async def test_default_accepts_and_records_the_request(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """By default the intake answers 202 `{}` and records path, headers, body and events."""
    body = payload(pipeline_event("p1"), job_event("j1"))
    status, headers, answer = await post(session, intake, body)

    assert (status, orjson.loads(answer)) == (202, {})
    assert headers["Content-Type"] == "application/json"
    assert intake.url.startswith("http://127.0.0.1:")
    [received] = intake.received
    assert received.path == PIPELINE_PATH
    assert received.headers["dd-api-key"] == API_KEY
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["User-Agent"].startswith("Python/")
    assert "Content-Encoding" not in received.headers
    assert received.raw == received.body == body
    assert received.events == [pipeline_event("p1"), job_event("j1")]
    assert received.answered == 202
    assert intake.accepted_events == [pipeline_event("p1"), job_event("j1")]


async def test_single_object_under_data_is_one_event(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A single object under data is recorded as a list of one event."""
    status, _, _ = await post(session, intake, orjson.dumps({"data": pipeline_event("p1")}))

    assert status == 202
    assert intake.received[0].events == [pipeline_event("p1")]


async def test_malformed_body_is_answered_400_and_not_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A body that is not a JSON object with data gets 400 and adds no accepted events."""
    for body in (b"not json", b"[]", b'{"events": []}', b'{"data": [1]}'):
        status, _, answer = await post(session, intake, body)
        assert status == 400
        assert "malformed payload" in error_details(answer)[0]

    assert [r.answered for r in intake.received] == [400] * 4
    assert all(r.events == [] for r in intake.received)
    assert intake.accepted_events == []


async def test_queue_is_used_in_order_then_default(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Queued answers are used once each, in order, and then the default answers again."""
    intake.queue(Status(500), RateLimited())
    intake.queue(Status(503))

    assert await statuses(session, intake, 5) == [500, 429, 503, 202, 202]
    assert [r.answered for r in intake.received] == [500, 429, 503, 202, 202]
    assert intake.accepted_events == [pipeline_event("p3"), pipeline_event("p4")]


async def test_default_can_be_replaced(intake: FakeIntake, session: aiohttp.ClientSession) -> None:
    """Setting default changes the answer for every later request with an empty queue."""
    intake.default = Status(502)
    assert await statuses(session, intake, 2) == [502, 502]

    intake.default = Accept()
    assert await statuses(session, intake, 1) == [202]


async def test_status_sends_datadog_error_body_and_headers(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Status answers its status, extra headers and an errors list with status, title, detail."""
    intake.queue(Status(403, headers={"X-Extra": "yes"}, detail="API key is invalid"))

    status, headers, answer = await post(session, intake, payload(pipeline_event("p1")))

    assert status == 403
    assert headers["X-Extra"] == "yes"
    assert orjson.loads(answer) == {
        "errors": [{"status": "403", "title": "Forbidden", "detail": "API key is invalid"}]
    }
    assert intake.received[0].answered == 403
    assert intake.accepted_events == []


def test_status_outside_200_to_599_is_refused() -> None:
    """Status refuses a status that cannot be a final HTTP answer."""
    with pytest.raises(ValueError, match="status"):
        Status(101)


async def test_reject_events_names_the_matching_events(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """RejectEvents answers 400 with a detail per matching event, naming its id and index."""

    def is_bad(event: dict[str, Any]) -> bool:
        resource = event["attributes"]["resource"]
        return bool(resource.get("unique_id") == "bad" or resource.get("id") == "j-bad")

    intake.default = RejectEvents(is_bad, detail_prefix="missing field")
    events = [pipeline_event("ok"), pipeline_event("bad"), job_event("j-bad")]

    status, _, answer = await post(session, intake, payload(*events))

    assert status == 400
    assert error_details(answer) == [
        "missing field: data[1] (unique_id=bad)",
        "missing field: data[2] (id=j-bad)",
    ]
    assert intake.received[0].events == events
    assert intake.accepted_events == []


async def test_reject_events_names_an_event_without_id_by_index(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """RejectEvents names an event that has no resource id by its index alone."""
    intake.default = RejectEvents(lambda event: "attributes" not in event)

    status, _, answer = await post(session, intake, payload(pipeline_event("p"), {"x": 1}))

    assert status == 400
    assert error_details(answer) == ["invalid event: data[1]"]


async def test_reject_events_accepts_when_nothing_matches(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """RejectEvents answers 202 when no event in the batch matches."""
    intake.default = RejectEvents(lambda event: False)

    assert await statuses(session, intake, 1) == [202]
    assert intake.accepted_events == [pipeline_event("p0")]


async def test_too_large_threshold_is_the_decoded_length(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """TooLarge answers 202 up to max_bytes of decoded body and 413 beyond, gzip or not."""
    body = payload(pipeline_event("p1"))
    intake.default = TooLarge(max_bytes=len(body))

    assert (await post(session, intake, body))[0] == 202
    status, _, answer = await post(session, intake, body + b" ")
    assert status == 413
    assert str(len(body) + 1) in error_details(answer)[0]

    big = payload(*(pipeline_event(f"p{i}") for i in range(50)))
    intake.default = TooLarge(max_bytes=len(big) - 1)
    compressed = gzip.compress(big)
    assert len(compressed) < len(big) - 1
    status, _, _ = await post(session, intake, compressed, {"Content-Encoding": "gzip"})
    assert status == 413
    assert [r.answered for r in intake.received] == [202, 413, 413]


async def test_rate_limited_sends_retry_after_and_rate_limit_headers(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """RateLimited answers 429 with Retry-After and X-RateLimit-* headers."""
    intake.queue(RateLimited(), RateLimited(retry_after=None, reset="7", remaining="3"))

    status, headers, answer = await post(session, intake, payload(pipeline_event("p1")))
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert headers["X-RateLimit-Limit"] == "100"
    assert headers["X-RateLimit-Period"] == "60"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" not in headers
    assert orjson.loads(answer)["errors"][0]["status"] == "429"

    status, headers, _ = await post(session, intake, payload(pipeline_event("p2")))
    assert status == 429
    assert "Retry-After" not in headers
    assert headers["X-RateLimit-Reset"] == "7"
    assert headers["X-RateLimit-Remaining"] == "3"


async def test_slow_delays_the_answer(intake: FakeIntake, session: aiohttp.ClientSession) -> None:
    """Slow answers `then` only after delay_s has passed."""
    intake.queue(Slow(0.2), Slow(0.2, then=Status(500)))

    started = time.monotonic()
    status, _, _ = await post(session, intake, payload(pipeline_event("p1")))
    assert time.monotonic() - started >= 0.2
    assert status == 202

    started = time.monotonic()
    status, _, _ = await post(session, intake, payload(pipeline_event("p2")))
    assert time.monotonic() - started >= 0.2
    assert status == 500


async def test_slow_past_the_client_timeout_times_out_and_is_not_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A client timeout shorter than Slow's delay raises, and the late answer counts as dropped."""
    intake.default = Slow(0.2)

    with pytest.raises(asyncio.TimeoutError):
        await post(
            session,
            intake,
            payload(pipeline_event("p1")),
            client_timeout=aiohttp.ClientTimeout(total=0.05),
        )
    await asyncio.sleep(0.3)  # let the intake reach the end of the delay

    assert [r.answered for r in intake.received] == [0]
    assert intake.accepted_events == []
    assert_no_server_warnings(caplog)


async def test_close_drops_requests_still_delayed(caplog: pytest.LogCaptureFixture) -> None:
    """Closing the intake drops a request Slow is still delaying instead of waiting it out."""
    intake = FakeIntake(default=Slow(30))
    await intake.start()
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(post(session, intake, payload(pipeline_event("p1"))))
        await asyncio.sleep(0.1)  # let the request reach the intake

        started = time.monotonic()
        await intake.close()
        assert time.monotonic() - started < 2

        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pending
    assert [r.answered for r in intake.received] == [0]
    assert_no_server_warnings(caplog)


async def test_drop_closes_the_connection_without_an_answer(
    intake: FakeIntake, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Drop closes the connection so the client sees a disconnect, and records status 0."""
    intake.queue(Drop())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, intake, payload(pipeline_event("p1")))
    assert (await post(session, intake, payload(pipeline_event("p2"))))[0] == 202

    assert [r.answered for r in intake.received] == [0, 202]
    assert intake.received[0].events == [pipeline_event("p1")]
    assert intake.accepted_events == [pipeline_event("p2")]
    assert_no_server_warnings(caplog)


async def test_drop_on_a_reused_connection(
    intake: FakeIntake, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Drop also disconnects a request sent on a kept-alive connection, without a retry."""
    intake.queue(Accept(), Drop())

    assert (await post(session, intake, payload(pipeline_event("p1"))))[0] == 202
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, intake, payload(pipeline_event("p2")))

    assert [r.answered for r in intake.received] == [202, 0]
    assert_no_server_warnings(caplog)


async def test_flaky_with_a_fixed_seed_is_reproducible(session: aiohttp.ClientSession) -> None:
    """Flaky fails exactly where random.Random(seed) draws below rate, the same on every run."""
    rng = random.Random(7)
    expected = [503 if rng.random() < 0.5 else 202 for _ in range(20)]
    assert 202 in expected
    assert 503 in expected

    for _ in range(2):
        async with FakeIntake(default=Flaky(rate=0.5, seed=7)) as intake:
            assert await statuses(session, intake, 20) == expected


async def test_flaky_answers_its_failure(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Flaky with rate 1 always answers its failure and with rate 0 never does."""
    intake.queue(*(Flaky(rate=1.0, seed=1, failure=RateLimited()) for _ in range(2)))
    intake.queue(Flaky(rate=0.0, seed=1))

    assert await statuses(session, intake, 3) == [429, 429, 202]


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
async def test_encoded_body_is_decoded(
    intake: FakeIntake,
    session: aiohttp.ClientSession,
    encoding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    """A gzip or deflate body is kept as sent in raw and decoded into body and events."""
    body = payload(pipeline_event("p1"))
    wire = encode(body)

    status, _, _ = await post(session, intake, wire, {"Content-Encoding": encoding})

    assert status == 202
    [received] = intake.received
    assert received.headers["Content-Encoding"] == encoding
    assert received.raw == wire
    assert received.body == body
    assert received.events == [pipeline_event("p1")]


async def test_undecodable_body_is_answered_400(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A body that does not decode as its Content-Encoding says gets 400 and keeps raw as body."""
    status, _, _ = await post(session, intake, b"not gzip", {"Content-Encoding": "gzip"})

    assert status == 400
    assert intake.received[0].body == b"not gzip"
    assert intake.received[0].events == []


async def test_other_paths_and_methods_are_recorded_and_refused(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Requests to another path get 404, other methods on the pipeline path 405; both recorded."""
    intake.queue(Status(500))
    async with session.post(intake.url + "/api/v2/ci/pipelines", data=b"{}") as response:
        assert response.status == 404
    async with session.get(intake.url + PIPELINE_PATH) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"

    assert [(r.path, r.answered) for r in intake.received] == [
        ("/api/v2/ci/pipelines", 404),
        (PIPELINE_PATH, 405),
    ]
    assert (await post(session, intake, payload(pipeline_event("p1"))))[0] == 500


async def test_wait_for_events_resolves_when_enough_are_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """wait_for_events returns once accepted events reach n, counting only 2xx answers."""
    intake.queue(Status(500))
    waiter = asyncio.create_task(intake.wait_for_events(3, timeout_s=2))

    await post(session, intake, payload(pipeline_event("a"), pipeline_event("b")))
    await post(session, intake, payload(pipeline_event("c"), pipeline_event("d")))
    await asyncio.sleep(0)
    assert not waiter.done()
    await post(session, intake, payload(pipeline_event("e")))

    await asyncio.wait_for(waiter, timeout=1)
    assert len(intake.accepted_events) == 3
    await intake.wait_for_events(3, timeout_s=0.01)  # already satisfied: returns at once


async def test_wait_for_events_times_out(intake: FakeIntake) -> None:
    """wait_for_events raises TimeoutError when too few events arrive within timeout_s."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 of 1 accepted events"):
        await intake.wait_for_events(1, timeout_s=0.1)
    assert 0.1 <= time.monotonic() - started < 1


async def test_intake_listens_on_loopback_only() -> None:
    """The intake binds 127.0.0.1 on a fresh port and refuses url before start."""
    intake = FakeIntake()
    with pytest.raises(RuntimeError, match="not started"):
        _ = intake.url
    async with intake, FakeIntake() as other:
        assert intake.url.startswith("http://127.0.0.1:")
        assert other.url != intake.url
    await intake.close()  # closing twice is harmless


def test_answers_are_values() -> None:
    """Answers compare by value, so a test can state the expected answer plainly."""
    answers: list[Answer] = [Slow(0.1, then=Status(500)), Flaky(0.5, seed=3)]
    assert answers == [Slow(0.1, then=Status(500)), Flaky(0.5, seed=3)]
