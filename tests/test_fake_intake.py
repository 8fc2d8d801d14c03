"""The fake Datadog intake that delivery tests send to: what it records and how answers reply."""

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
    FailWhen,
    FakeIntake,
    Flaky,
    RateLimited,
    Raw,
    RejectEvents,
    Reply,
    Slow,
    Status,
    TooLarge,
)
from tests.helpers import API_KEY, JSON


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test (before the intake, which it depends on)."""
    async with aiohttp.ClientSession() as client:
        yield client


def ev(value: str, key: str = "unique_id") -> dict[str, Any]:
    """An event whose resource carries ``key`` (``unique_id`` for a pipeline, ``id`` for a job)."""
    return {"type": "cipipeline_resource_request", "attributes": {"resource": {key: value}}}


def payload(*events: dict[str, Any]) -> bytes:
    """A request body with these events under data."""
    return orjson.dumps({"data": list(events)})


async def post(
    session: aiohttp.ClientSession,
    intake: FakeIntake,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST a body to the intake's pipeline path; return status, headers and response body."""
    sent = {"DD-API-KEY": API_KEY, **JSON, **(headers or {})}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    url = intake.url + PIPELINE_PATH
    async with session.post(url, data=body, headers=sent, timeout=timeout) as response:
        return response.status, response.headers, await response.read()


async def statuses(session: aiohttp.ClientSession, intake: FakeIntake, n: int) -> list[int]:
    """The statuses of n sequential single-event posts."""
    return [(await post(session, intake, payload(ev(f"p{i}"))))[0] for i in range(n)]


def details(body: bytes) -> list[str]:
    """The detail strings of a Datadog error body."""
    return [error["detail"] for error in orjson.loads(body)["errors"]]


def assert_no_server_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Fail if aiohttp logged a warning or an error (e.g. an unhandled exception)."""
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_default_accepts_and_records_the_request(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """By default the intake answers 202 `{}` and records path, headers, body and events."""
    body = payload(ev("p1"), ev("j1", "id"))
    status, headers, answer = await post(session, intake, body)

    assert (202, {}) == (status, orjson.loads(answer))
    assert "application/json" == headers["Content-Type"]
    assert intake.url.startswith("http://127.0.0.1:")
    [received] = intake.received
    assert (PIPELINE_PATH, API_KEY) == (received.path, received.headers["dd-api-key"])
    assert "application/json" == received.headers["Content-Type"]
    assert received.headers["User-Agent"].startswith("Python/")
    assert "Content-Encoding" not in received.headers
    assert body == received.raw == received.body
    assert [ev("p1"), ev("j1", "id")] == received.events == intake.accepted_events
    assert 202 == received.answered


async def test_single_object_under_data_is_one_event(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A single object under data is recorded as a list of one event."""
    assert 202 == (await post(session, intake, orjson.dumps({"data": ev("p1")})))[0]
    assert [ev("p1")] == intake.received[0].events


async def test_malformed_body_is_answered_400_and_not_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A body that is not a JSON object with data gets 400 and adds no accepted events."""
    for body in (b"not json", b"[]", b'{"events": []}', b'{"data": [1]}'):
        status, _, answer = await post(session, intake, body)
        assert 400 == status
        assert "malformed payload" in details(answer)[0]

    assert [(400, [])] * 4 == [(r.answered, r.events) for r in intake.received]
    assert [] == intake.accepted_events


async def test_queue_is_used_in_order_then_default(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Queued answers are used once each, in order, and then the default answers again."""
    intake.queue(Status(500), RateLimited())
    intake.queue(Status(503))

    assert [500, 429, 503, 202, 202] == await statuses(session, intake, 5)
    assert [500, 429, 503, 202, 202] == [r.answered for r in intake.received]
    assert [ev("p3"), ev("p4")] == intake.accepted_events


async def test_default_can_be_replaced(intake: FakeIntake, session: aiohttp.ClientSession) -> None:
    """Setting default changes the answer for every later request with an empty queue."""
    intake.default = Status(502)
    assert [502, 502] == await statuses(session, intake, 2)
    intake.default = Accept()
    assert [202] == await statuses(session, intake, 1)


def resource_is(*values: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate matching events whose resource unique_id or id is one of ``values``."""
    return lambda e: bool({*e["attributes"]["resource"].values()} & {*values})


BATCH = [ev("ok"), ev("bad"), ev("j-bad", "id")]
RATE: dict[str, str | None] = {
    "Retry-After": "1",
    "X-RateLimit-Limit": "100",
    "X-RateLimit-Period": "60",
}
NO_RESET: dict[str, str | None] = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": None}


def dd_error(status: int, title: str, *lines: str) -> dict[str, Any]:
    """Datadog's error body with one entry per detail line."""
    return {"errors": [{"status": str(status), "title": title, "detail": d} for d in lines]}


# Each answer against BATCH: the status, headers (None: absent) and JSON body it replies.
REPLIES: list[tuple[str, Answer, int, dict[str, str | None], Any]] = [
    ("status-error", Status(403, {"X-Extra": "yes"}, "API key is invalid"), 403,
     {"X-Extra": "yes"}, dd_error(403, "Forbidden", "API key is invalid")),
    ("status-2xx", Status(200), 200, {}, {}),
    ("rate-limited", RateLimited(), 429, RATE | NO_RESET,
     dd_error(429, "Too Many Requests", "rate limit exceeded")),
    ("rate-limited-reset", RateLimited(retry_after=None, reset="7", remaining="3"), 429,
     {"Retry-After": None, "X-RateLimit-Reset": "7", "X-RateLimit-Remaining": "3"}, None),
    ("reject-events", RejectEvents(resource_is("bad", "j-bad"), detail_prefix="missing field"),
     400, {}, dd_error(400, "Bad Request", "missing field: data[1] (unique_id=bad)",
                       "missing field: data[2] (id=j-bad)")),
    ("reject-none", RejectEvents(lambda e: False), 202, {}, {}),
    ("fail-when", FailWhen(resource_is("j-bad"), Status(502, detail="choked")), 502, {},
     dd_error(502, "Bad Gateway", "choked")),
    ("fail-when-none", FailWhen(resource_is("other")), 202, {}, {}),
    ("flaky-always", Flaky(rate=1.0, seed=1, failure=RateLimited()), 429, RATE, None),
    ("flaky-never", Flaky(rate=0.0, seed=1), 202, {}, {}),
    ("raw", Raw(503, b'["as is"]', {"Content-Type": "text/plain"}), 503,
     {"Content-Type": "text/plain"}, ["as is"]),
    ("slow-then", Slow(0.01, then=Status(500)), 500, {}, None),
    ("any-callable", lambda r: Reply(207, orjson.dumps(len(r.events)), {"X-N": "3"}), 207,
     {"X-N": "3"}, 3),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "status", "headers", "body"),
                         [pytest.param(*case[1:], id=case[0]) for case in REPLIES])  # fmt: skip
async def test_answer_replies(
    intake: FakeIntake,
    session: aiohttp.ClientSession,
    answer: Answer,
    status: int,
    headers: dict[str, str | None],
    body: Any,
) -> None:
    """Each answer replies its status, headers and body, and only a 2xx accepts the events."""
    intake.queue(answer)

    got_status, got_headers, got_body = await post(session, intake, payload(*BATCH))

    assert status == got_status
    assert headers == {name: got_headers.get(name) for name in headers}
    if body is not None:
        assert body == orjson.loads(got_body)
    assert [(status, BATCH)] == [(r.answered, r.events) for r in intake.received]
    assert (BATCH if 200 <= status < 300 else []) == intake.accepted_events


async def test_reject_events_names_an_event_without_id_by_index(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """RejectEvents names an event that has no resource id by its index alone."""
    intake.default = RejectEvents(lambda event: "attributes" not in event)
    status, _, answer = await post(session, intake, payload(ev("p"), {"x": 1}))
    assert (400, ["invalid event: data[1]"]) == (status, details(answer))


async def test_too_large_threshold_is_the_decoded_length(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """TooLarge answers 202 up to max_bytes of decoded body and 413 beyond, gzip or not."""
    body = payload(ev("p1"))
    intake.default = TooLarge(max_bytes=len(body))
    assert 202 == (await post(session, intake, body))[0]
    status, _, answer = await post(session, intake, body + b" ")
    assert 413 == status
    assert str(len(body) + 1) in details(answer)[0]

    big = payload(*(ev(f"p{i}") for i in range(50)))
    intake.default = TooLarge(max_bytes=len(big) - 1)
    compressed = gzip.compress(big)
    assert len(compressed) < len(big) - 1
    assert 413 == (await post(session, intake, compressed, {"Content-Encoding": "gzip"}))[0]
    assert [202, 413, 413] == [r.answered for r in intake.received]


async def test_slow_delays_the_answer(intake: FakeIntake, session: aiohttp.ClientSession) -> None:
    """Slow answers `then` only after delay_s has passed."""
    intake.queue(Slow(0.2), Slow(0.2, then=Status(500)))
    for expected in (202, 500):
        started = time.monotonic()
        assert expected == (await post(session, intake, payload(ev("p"))))[0]
        assert time.monotonic() - started >= 0.2


async def test_slow_past_the_client_timeout_times_out_and_is_not_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A client timeout shorter than Slow's delay raises, and the late answer counts as dropped."""
    intake.default = Slow(0.2)
    with pytest.raises(asyncio.TimeoutError):
        await post(session, intake, payload(ev("p1")), timeout_s=0.05)
    await intake.wait_for_requests(1, timeout_s=2)  # the intake reaches the end of the delay

    assert [0] == [r.answered for r in intake.received]
    assert [] == intake.accepted_events
    assert_no_server_warnings(caplog)


async def test_close_drops_requests_still_delayed(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing the intake drops a request Slow is still delaying instead of waiting it out."""
    async with FakeIntake(default=Slow(30)) as intake:
        pending = asyncio.create_task(post(session, intake, payload(ev("p1"))))
        await intake.wait_for_arrivals(1, timeout_s=2)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending
    assert [0] == [r.answered for r in intake.received]
    assert_no_server_warnings(caplog)


async def test_drop_closes_the_connection_without_an_answer(
    intake: FakeIntake, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Drop disconnects the client, even on a kept-alive connection, and records status 0."""
    intake.queue(Drop(), Accept(), Drop())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, intake, payload(ev("p1")))
    assert 202 == (await post(session, intake, payload(ev("p2"))))[0]
    with pytest.raises(aiohttp.ServerDisconnectedError):  # reused connection, no retry
        await post(session, intake, payload(ev("p3")))

    assert [0, 202, 0] == [r.answered for r in intake.received]
    assert [ev("p1")] == intake.received[0].events
    assert [ev("p2")] == intake.accepted_events
    assert_no_server_warnings(caplog)


async def test_flaky_with_a_fixed_seed_is_reproducible(session: aiohttp.ClientSession) -> None:
    """Flaky fails exactly where random.Random(seed) draws below rate, the same on every run."""
    rng = random.Random(7)
    expected = [503 if rng.random() < 0.5 else 202 for _ in range(20)]
    assert {202, 503} == set(expected)
    for _ in range(2):
        async with FakeIntake(default=Flaky(rate=0.5, seed=7)) as intake:
            assert expected == await statuses(session, intake, 20)


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib header."""
    return zlib.compress(data, wbits=-zlib.MAX_WBITS)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
async def test_encoded_body_is_decoded(
    intake: FakeIntake,
    session: aiohttp.ClientSession,
    encoding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    """A gzip or deflate body is kept as sent in raw and decoded into body and events."""
    body = payload(ev("p1"))
    wire = encode(body)
    assert 202 == (await post(session, intake, wire, {"Content-Encoding": encoding}))[0]
    [received] = intake.received
    assert (encoding, wire, body) == (
        received.headers["Content-Encoding"],
        received.raw,
        received.body,
    )
    assert [ev("p1")] == received.events


async def test_undecodable_body_is_answered_400(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """A body that does not decode as its Content-Encoding says gets 400 and keeps raw as body."""
    assert 400 == (await post(session, intake, b"not gzip", {"Content-Encoding": "gzip"}))[0]
    assert (b"not gzip", []) == (intake.received[0].body, intake.received[0].events)


async def test_other_paths_and_methods_are_refused_and_use_no_answer(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """Another path gets 404 and another method 405 (Allow: POST); the queue is left alone."""
    intake.queue(Status(500))
    async with session.post(intake.url + "/api/v2/ci/pipelines", data=b"{}") as response:
        assert 404 == response.status
    async with session.get(intake.url + PIPELINE_PATH) as response:
        assert (405, "POST") == (response.status, response.headers["Allow"])
    assert [] == intake.received
    assert 500 == (await post(session, intake, payload(ev("p1"))))[0]


async def test_wait_for_events_resolves_when_enough_are_accepted(
    intake: FakeIntake, session: aiohttp.ClientSession
) -> None:
    """wait_for_events returns once accepted events reach n, counting only 2xx answers."""
    intake.queue(Status(500))
    waiter = asyncio.create_task(intake.wait_for_events(3, timeout_s=2))

    await post(session, intake, payload(ev("a"), ev("b")))
    await post(session, intake, payload(ev("c"), ev("d")))
    await asyncio.sleep(0)
    assert not waiter.done()
    await post(session, intake, payload(ev("e")))

    await asyncio.wait_for(waiter, timeout=1)
    assert 3 == len(intake.accepted_events)
    await intake.wait_for_events(3, timeout_s=0.01)  # already satisfied: returns at once


async def test_wait_for_events_times_out(intake: FakeIntake) -> None:
    """wait_for_events raises TimeoutError when too few events arrive within timeout_s."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 of 1 accepted events"):
        await intake.wait_for_events(1, timeout_s=0.1)
    assert 0.1 <= time.monotonic() - started < 1


async def test_intake_listens_on_loopback_only() -> None:
    """The intake binds 127.0.0.1 on a fresh port, and has no URL before it starts."""
    intake = FakeIntake()
    assert "" == intake.url
    async with intake, FakeIntake() as other:
        assert intake.url.startswith("http://127.0.0.1:")
        assert other.url != intake.url


def test_answers_are_values() -> None:
    """Answers compare by value, so a test can state the expected answer plainly."""
    answers: list[Answer] = [Slow(0.1, then=Status(500)), Flaky(0.5, seed=3)]
    assert [Slow(0.1, then=Status(500)), Flaky(0.5, seed=3)] == answers


def test_status_outside_200_to_599_is_refused() -> None:
    """Status refuses a status that cannot be a final HTTP answer."""
    with pytest.raises(ValueError, match="status"):
        Status(101)
