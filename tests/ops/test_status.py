"""GET /status and ``ci-relay status`` over a real relay process: each exit status comes
from the state it names."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web

from relay.delivery.snapshot import State
from relay.ops.status import CONDITIONS
from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import ago, event, request
from tests.fake_intake import Accept, Answer, FakeIntake, Status
from tests.helpers import API_KEY, JSON, Ran, ci_relay, closed_port, jobs, relay_command


async def ci_relay_status(*args: str) -> Ran:
    """``ci-relay status ARGS``."""
    return await ci_relay("status", *args)


def config(tmp_path: Path, intake: FakeIntake | None, **groups: dict[str, Any]) -> Path:
    upstream = {} if intake is None else {"url": intake.url, "api_key": API_KEY}
    return write_config(
        tmp_path / "relay.toml",
        server={"port": closed_port()}  # a fixed port: the command finds it in the file
        | groups.pop("server", {}),
        outbox={"path": str(tmp_path / "outbox.db")} | groups.pop("outbox", {}),
        upstream=upstream | groups.pop("upstream", {}),
        flusher={"flush_interval_s": 0.05} | groups.pop("flusher", {}),
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2} | groups.pop("retry", {}),
        **groups,
    )


@asynccontextmanager
async def relay_with(
    tmp_path: Path, answer: Answer | None, **groups: dict[str, Any]
) -> AsyncIterator[tuple[RelayProcess, aiohttp.ClientSession, Path, FakeIntake | None]]:
    """A relay process (its config written to a file) and, unless ``answer`` is None, a
    fake intake answering ``answer`` to everything."""
    async with aiohttp.ClientSession() as client:
        if answer is None:
            path = config(tmp_path, None, **groups)
            async with RelayProcess(path) as relay:
                yield relay, client, path, None
            return
        async with FakeIntake(answer) as intake:
            path = config(tmp_path, intake, **groups)
            async with RelayProcess(path) as relay:
                yield relay, client, path, intake


async def post(client: aiohttp.ClientSession, relay: RelayProcess, *events: Any) -> int:
    async with client.post(relay.url, data=orjson.dumps(request(*events)), headers=JSON) as r:
        return r.status


async def document(client: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, Any]:
    async with client.get(f"http://127.0.0.1:{relay.port}/status") as resp:
        assert 200 == resp.status
        body: dict[str, Any] = await resp.json()
        return body


async def until(
    client: aiohttp.ClientSession,
    relay: RelayProcess,
    condition: str | Callable[[dict[str, Any]], bool],
    timeout_s: float = 15,
) -> dict[str, Any]:
    """The /status document once ``condition`` is among its conditions (or holds of it)."""
    holds = condition if callable(condition) else lambda found: condition in found["conditions"]
    deadline = time.monotonic() + timeout_s
    found = await document(client, relay)
    while not holds(found):
        assert time.monotonic() < deadline, f"timed out waiting: {found}"
        await asyncio.sleep(0.05)
        found = await document(client, relay)
    return found


async def test_healthy_relay_exits_0_and_shows_the_last_delivery(tmp_path: Path) -> None:
    """After a delivery: exit 0, the summary names the delivery and the outbox, JSON agrees."""
    async with relay_with(tmp_path, Accept()) as (relay, client, path, intake):
        assert intake is not None
        assert 202 == await post(client, relay, *jobs(3))
        await intake.wait_for_events(3, timeout_s=10)
        await until(client, relay, lambda found: found["delivery"]["last_delivery"] is not None)
        shown = await ci_relay_status("--config", str(path))
        as_json = await ci_relay_status("--config", str(path), "--json")

    assert (0, "") == (shown.status, shown.stderr)
    assert "delivery      delivering for " in shown.stdout
    assert "last delivery 3 events " in shown.stdout
    assert f"outbox file   {tmp_path / 'outbox.db'} (" in shown.stdout
    assert shown.stdout.rstrip().endswith("status: ok")
    body = as_json.json()
    assert 0 == as_json.status
    assert [] == body["conditions"]
    assert 3 == body["delivery"]["last_delivery"]["events"]
    assert 3 == body["delivery"]["delivered_since_start"]
    assert (0, 0) == (body["outbox"]["events"], body["outbox"]["bytes"])
    assert body["outbox"]["file_bytes"] > 0
    assert body["uptime_s"] >= 0


async def test_refused_key_exits_6_naming_the_answer(tmp_path: Path) -> None:
    """A 403 from the upstream: state unauthorized, the answer as the last error, exit 6."""
    async with relay_with(tmp_path, Status(403, detail="Forbidden")) as (relay, client, path, _):
        assert 202 == await post(client, relay, *jobs(2))
        found = await until(client, relay, "unauthorized")
        shown = await ci_relay_status("--config", str(path))

    assert ["unauthorized"] == found["conditions"]
    assert "403: Forbidden" == found["delivery"]["last_error"]["answer"]
    assert 2 == found["outbox"]["events"]
    assert found["delivery"]["next_try_in_s"] > 0
    assert 6 == shown.status
    assert "delivery      unauthorized for " in shown.stdout
    assert "403: Forbidden" in shown.stdout
    assert "status: unauthorized: the upstream refuses the API key" in shown.stdout


async def test_upstream_refusing_everything_alike_exits_8(tmp_path: Path) -> None:
    """Every request answered 400 with one detail: state rejecting, exit 8."""
    retry = {"systemic_reject_after": 2}
    answer = Status(400, detail="bad site")
    async with relay_with(tmp_path, answer, retry=retry) as (relay, client, path, _):
        assert 202 == await post(client, relay, *jobs(4))
        await until(client, relay, "rejecting")
        shown = await ci_relay_status("--config", str(path))
    assert 8 == shown.status


async def test_wrong_url_exits_9(tmp_path: Path) -> None:
    """A 404 from the upstream: state misconfigured, exit 9."""
    async with relay_with(tmp_path, Status(404)) as (relay, client, path, _):
        assert 202 == await post(client, relay, *jobs(1))
        await until(client, relay, "misconfigured")
        shown = await ci_relay_status("--config", str(path))
    assert 9 == shown.status


async def test_failing_upstream_exits_10_and_counts_the_retries(tmp_path: Path) -> None:
    """503s: state retrying, the retries counted, exit 10."""
    async with relay_with(tmp_path, Status(503)) as (relay, client, path, _):
        assert 202 == await post(client, relay, *jobs(1))
        found = await until(client, relay, "retrying")
        shown = await ci_relay_status("--config", str(path))
    assert found["delivery"]["retries_since_start"] >= 1
    assert found["delivery"]["last_error"]["answer"].startswith("503: ")
    assert 10 == shown.status


async def test_no_key_exits_7_then_a_full_outbox_exits_5(tmp_path: Path) -> None:
    """Without a key events wait (exit 7); once runners get 503 for a full outbox, exit 5."""
    outbox = {"max_events": 2}
    async with relay_with(tmp_path, None, outbox=outbox) as (relay, client, path, _):
        assert 202 == await post(client, relay, *jobs(1))
        waiting = await ci_relay_status("--config", str(path))
        assert 202 == await post(client, relay, *jobs(1, prefix="second"))
        assert 503 == await post(client, relay, *jobs(1, prefix="third"))
        full = await ci_relay_status("--config", str(path), "--json")

    assert 7 == waiting.status
    assert "status: no_api_key" in waiting.stdout
    assert 5 == full.status
    assert ["outbox_full", "no_api_key"] == full.json()["conditions"]
    assert full.json()["outbox"]["full"]


async def test_events_near_expiry_exit_4_with_the_next_expiry(tmp_path: Path) -> None:
    """An event that ended 13 h ago and cannot be delivered: exit 4, its expiry shown."""
    old = event("job", id="old", name="old", start=ago(hours=13, minutes=1), end=ago(hours=13))
    async with relay_with(tmp_path, Status(503)) as (relay, client, path, _):
        assert 202 == await post(client, relay, old)
        found = await until(client, relay, "expiring")
        shown = await ci_relay_status("--config", str(path))

    assert "expiring" == found["conditions"][0]
    in_s = found["outbox"]["next_expiry"]["in_s"]
    assert 5 * 3600 - 120 < in_s < 5 * 3600 + 60
    assert 4 == shown.status
    assert "next expiry   in 4h 59m" in shown.stdout or "next expiry   in 5h 0m" in shown.stdout


async def test_unwritable_store_exits_11(tmp_path: Path) -> None:
    """An outside lock on the outbox through an ack: state store_unavailable, exit 11."""
    outbox = {"busy_timeout_s": 0.1}
    async with relay_with(tmp_path, Status(503), outbox=outbox) as (relay, client, path, intake):
        assert intake is not None
        assert 202 == await post(client, relay, *jobs(1))
        await intake.wait_for_requests(1, timeout_s=10)
        lock = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            intake.default = Accept()
            await until(client, relay, "store_unavailable")
            shown = await ci_relay_status("--config", str(path))
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    assert 11 == shown.status


async def test_no_relay_exits_3_in_one_line(tmp_path: Path) -> None:
    """Nothing listening at the configured port: exit 3 and one line on stderr."""
    path = write_config(tmp_path / "relay.toml", server={"port": closed_port()})
    ran = await ci_relay_status("--config", str(path))
    assert 3 == ran.status
    assert "" == ran.stdout
    assert 1 == len(ran.stderr.splitlines())
    assert ran.stderr.startswith("ci-relay: no relay answers at http://127.0.0.1:")


async def test_url_option_and_its_check(tmp_path: Path) -> None:
    """--url reaches a relay without its config; a non-HTTP URL is a usage error (2)."""
    async with relay_with(tmp_path, Accept()) as (relay, _, _, _):
        ran = await ci_relay_status("--url", f"http://127.0.0.1:{relay.port}/", "--json")
    refused = await ci_relay_status("--url", f"file://{tmp_path}")
    assert (0, []) == (ran.status, ran.json()["conditions"])
    assert 2 == refused.status
    assert "--url must start with http:// or https://" in refused.stderr


async def test_status_endpoint_methods(tmp_path: Path) -> None:
    """GET and HEAD /status answer 200 JSON; another method is 405 in Datadog's shape."""
    async with relay_with(tmp_path, Accept()) as (relay, client, _, _):
        base = f"http://127.0.0.1:{relay.port}/status"
        async with client.head(base) as head:
            head_status = head.status
        async with client.post(base, data=b"{}", headers=JSON) as post_:
            post_status, allow, body = post_.status, post_.headers["Allow"], await post_.json()
        found = await document(client, relay)
    assert 200 == head_status
    assert (405, "GET, HEAD") == (post_status, allow)
    assert "405" == body["errors"][0]["status"]
    assert {"version", "started_at", "uptime_s", "outbox", "dead_letters", "delivery"} <= set(found)


@pytest.mark.parametrize(
    "url",
    [
        "http://operator:SeCrEt1@127.0.0.1:9",
        "http://operator:SeCrEt1/SeCrEt2@127.0.0.1:9",
        "ftp://operator:SeCrEt1@127.0.0.1:9",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:abc",
    ],
    ids=["login", "slash-in-secret", "ftp", "port-99999", "port-text"],
)
async def test_url_option_is_checked_and_never_quotes_a_login(url: str) -> None:
    """A --url with a login, a bad scheme or a bad port is a usage error (2) in one line that
    names --url and quotes no part of the login or secret."""
    ran = await ci_relay_status("--url", url)
    lines = ran.stderr.splitlines()
    assert (2, 1, "") == (ran.status, len(lines), ran.stdout), ran.stderr
    assert "--url" in lines[0]
    assert [] == [part for part in ("operator", "SeCrEt1", "SeCrEt2") if part in lines[0]]


def test_every_delivery_state_but_delivering_is_a_condition_of_its_own() -> None:
    """Each state the flusher can be in, but delivering, is a /status condition with an exit
    status no other condition has; every condition is a state or an outbox condition."""
    states = set(get_args(State)) - {"delivering"}
    names = [condition.name for condition in CONDITIONS]
    statuses = [condition.exit_status for condition in CONDITIONS]
    assert states == set(names) - {"unreachable", "expiring", "outbox_full"}
    assert (len(names), len(statuses)) == (len(set(names)), len(set(statuses)))
    assert 12 == {c.name: c.exit_status for c in CONDITIONS}["delivery_failing"]


class _Listener:
    """An HTTP server on 127.0.0.1 that records every request it gets (method, target and
    headers) and answers ``answer`` to each: a proxy the command must not use, or the
    other origin a redirect points to."""

    def __init__(self, answer: Callable[[], web.StreamResponse]) -> None:
        self.answer = answer
        self.heard: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> _Listener:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.heard.append((request.method, str(request.url), dict(request.headers)))
        return self.answer()


STATUS_TOKEN = "status-token-value"  # noqa: S105 - a stand-in the test looks for


async def test_status_never_sends_the_token_through_a_proxy(tmp_path: Path) -> None:
    """``ci-relay status`` asks the relay directly whatever HTTP_PROXY says: the proxy hears
    nothing, so the ingest token in the request never reaches it."""
    async with (
        _Listener(lambda: web.json_response({}, status=502)) as proxy,
        relay_with(tmp_path, None, server={"ingest_token": STATUS_TOKEN}) as (_, _, path, _),
    ):
        env = {k: v for k, v in relay_free_env().items() if "proxy" not in k.lower()}
        env |= {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url}
        done = await relay_command("status", "--config", str(path), "--json", env=env)
    assert [] == proxy.heard
    assert ["no_api_key"] == orjson.loads(done.stdout)["conditions"], done.stderr


async def test_status_follows_no_redirect_with_the_token(tmp_path: Path) -> None:
    """A redirect from what answers at --url is not followed: the token is sent only to the
    address the operator gave, and the command says what answered (unreachable, 3)."""
    async with _Listener(lambda: web.json_response({"conditions": []})) as elsewhere:
        target = f"{elsewhere.url}/status"
        async with _Listener(
            lambda: web.Response(status=302, headers={"Location": target})
        ) as redirecting:
            path = config(tmp_path, None, server={"ingest_token": STATUS_TOKEN})
            ran = await ci_relay_status("--config", str(path), "--url", redirecting.url)
    assert [] == elsewhere.heard
    assert ["/status"] == [urlsplit(url).path for _, url, _ in redirecting.heard]
    assert 3 == ran.status, ran.stderr
    assert "302" in ran.stderr
