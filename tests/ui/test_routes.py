"""The page's routes over HTTP, without a browser: the JSON documents, the access rules, and
no 5xx for any request (these routes are not in /openapi.json, so schemathesis does not
reach them: this file does)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
import requests
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.config import OutboxSettings
from relay.keyfiles import KeyFile
from relay.testing.process import RelayProcess
from relay.testing.samples import request
from relay.ui.access import COOKIE, safe_next, session_value
from relay.ui.routes import CONTENT_SECURITY_POLICY
from tests.helpers import JSON, RunningRelay, serving, serving_in_thread
from tests.ui.conftest import relay_config
from tests.ui.fixture import CRITICAL, MISMATCHED_JOB, PIPELINE_ID, web_app

TOKEN = "a-token-of-the-ui-test"  # noqa: S105 - a stand-in the tests send


async def _post(relay: RunningRelay, events: list[dict[str, Any]], **headers: str) -> None:
    body = orjson.dumps(request(*events))
    async with relay.client.post(relay.url, data=body, headers=JSON | headers) as answer:
        assert 202 == answer.status


async def test_the_json_documents_of_a_pipeline_still_pending(relay: RunningRelay) -> None:
    """Events not yet sent show at once (read from the outbox): the list's summary, and the
    tree with its critical path and problems; not a dry run."""
    await _post(relay, web_app())
    async with relay.client.get(relay.base_url + "/ui/pipelines.json") as answer:
        assert "no-store" == answer.headers["Cache-Control"]
        listing = await answer.json()
    [summary] = listing["pipelines"]
    assert (False, PIPELINE_ID, "error", 3, 1, 10) == (
        listing["dry_run"],
        summary["unique_id"],
        summary["status"],
        summary["jobs"],
        summary["problems"],
        summary["fates"]["pending"],
    )
    async with relay.client.get(f"{relay.base_url}/ui/pipelines/{PIPELINE_ID}.json") as answer:
        document = await answer.json()
    assert list(CRITICAL) == document["critical_path"]
    assert [("pipeline-name-mismatch", "job", MISMATCHED_JOB)] == [
        (p["rule"], p["level"], p["id"]) for p in document["problems"]
    ]
    assert ["st-build", "st-test"] == [stage["id"] for stage in document["stages"]]
    assert isinstance(document["now_s"], float)


async def test_an_unknown_pipeline_is_404_in_datadogs_shape(relay: RunningRelay) -> None:
    async with relay.client.get(relay.base_url + "/ui/pipelines/never-seen.json") as answer:
        assert 404 == answer.status
        [error] = (await answer.json())["errors"]
    assert ("404", "Not Found") == (error["status"], error["title"])
    assert "never-seen" in error["detail"]


async def test_a_wrong_method_is_405_with_allow(relay: RunningRelay) -> None:
    for path, allowed in (("/ui", "GET, HEAD"), ("/ui/login", "GET, HEAD, POST")):
        async with relay.client.delete(relay.base_url + path) as answer:
            assert (405, allowed) == (answer.status, answer.headers["Allow"])
            assert CONTENT_SECURITY_POLICY == answer.headers["Content-Security-Policy"]


async def test_without_a_token_everything_is_open_and_login_goes_straight_on(
    relay: RunningRelay,
) -> None:
    for path in ("/ui", "/ui/pipelines.json", f"/ui/pipelines/{PIPELINE_ID}"):
        async with relay.client.get(relay.base_url + path) as answer:
            assert 200 == answer.status
    login = relay.base_url + "/ui/login"
    async with relay.client.get(login + "?next=/ui/pipelines/x", allow_redirects=False) as answer:
        assert (303, "/ui/pipelines/x") == (answer.status, answer.headers["Location"])
    async with relay.client.post(login, data={"token": "x"}, allow_redirects=False) as answer:
        assert (303, "/ui") == (answer.status, answer.headers["Location"])
        assert COOKIE not in answer.cookies


async def test_the_login_sets_a_cookie_derived_from_the_token(tmp_path: Path) -> None:
    """The cookie is an HMAC keyed with the token, HttpOnly, SameSite=Strict, for /ui; it
    opens the JSON and the pages; the redirect stays on the page's own paths."""
    settings_ = OutboxSettings(path=tmp_path / "outbox.db")
    token = KeyFile("server.ingest_token", SecretStr(TOKEN), None)
    async with serving(settings_, ingest_token=token) as relay:
        login = relay.base_url + "/ui/login"
        form = {"token": TOKEN, "next": "//evil.example/ui"}
        async with relay.client.post(login, data=form, allow_redirects=False) as answer:
            assert (303, "/ui") == (answer.status, answer.headers["Location"])
            set_cookie = answer.headers["Set-Cookie"]
        assert set_cookie.startswith(f"{COOKIE}={session_value(TOKEN)};")
        assert {"HttpOnly", "Path=/ui", "SameSite=Strict"} <= {
            part.strip() for part in set_cookie.split(";")
        }
        assert TOKEN not in set_cookie
        cookie = {"Cookie": set_cookie.split(";")[0]}
        for path in ("/ui/pipelines.json", "/ui"):
            url = relay.base_url + path
            async with relay.client.get(url, headers=cookie, allow_redirects=False) as answer:
                assert 200 == answer.status


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/ui"),
        ("", "/ui"),
        ("/ui", "/ui"),
        ("/ui/pipelines/a%20b", "/ui/pipelines/a%20b"),
        ("/ui?x=1", "/ui?x=1"),
        ("/uix", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("https://evil.example/ui", "/ui"),
        ("/ui/\\evil", "/ui"),
        ("/ui/\nSet-Cookie: x", "/ui"),
        ("/metrics", "/ui"),
    ],
)
def test_after_login_the_browser_goes_only_to_the_page_itself(
    given: str | None, expected: str
) -> None:
    assert expected == safe_next(given)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A relay with an ingest token, for blocking clients; its base URL."""
    folder = tmp_path_factory.mktemp("ui-live")
    token = KeyFile("server.ingest_token", SecretStr(TOKEN), None)
    with serving_in_thread(OutboxSettings(path=folder / "outbox.db"), token) as base_url:
        yield base_url


ODD_REQUESTS = [
    ("GET", "/ui/pipelines/%2F.json", {}, b""),
    ("GET", "/ui/pipelines/%ZZ", {}, b""),
    ("GET", "/ui/pipelines/%FF%FE.json", {"DD-API-KEY": TOKEN}, b""),
    ("GET", "/ui/pipelines/" + "x" * 8000 + ".json", {"DD-API-KEY": TOKEN}, b""),
    ("GET", "/ui/pipelines/.json", {"DD-API-KEY": TOKEN}, b""),
    ("GET", "/ui/static/..%2F..%2Fapp.py", {}, b""),
    ("GET", "/ui/static/list.html", {}, b""),
    ("GET", "/ui/static/", {}, b""),
    ("GET", "/ui/login?next=%0d%0aLocation:%20https://evil.example", {}, b""),
    ("GET", "/ui/pipelines.json", {"Cookie": f'{COOKIE}="\\x00\xff"; other'}, b""),
    ("GET", "/ui/pipelines.json", {"Authorization": "Bearer"}, b""),
    ("HEAD", "/ui", {}, b""),
    ("PUT", "/ui/pipelines/x", {}, b"{}"),
    ("POST", "/ui/login", {"Content-Type": "text/plain"}, b"token=x"),
    ("POST", "/ui/login", {"Content-Type": "application/x-www-form-urlencoded"}, b"\xff\xfe="),
    ("POST", "/ui/login", {"Content-Type": "application/x-www-form-urlencoded"}, b"token=%ff"),
    ("POST", "/ui/login", {"Content-Type": "application/x-www-form-urlencoded"}, b"&&==&"),
    ("POST", "/ui/login", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n"),
    ("POST", "/ui/login", {"Content-Type": "application/x-www-form-urlencoded"}, b"t" * 100_000),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), ODD_REQUESTS)
def test_odd_requests_are_never_a_5xx(
    live: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    answer = requests.request(method, live + path, headers=headers, data=body, timeout=30)
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400 and method != "HEAD" and "json" in answer.headers["Content-Type"]:
        assert {"errors"} == set(answer.json())


@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(unique_id=st.text(min_size=1, max_size=40), as_json=st.booleans())
def test_any_pipeline_id_is_answered_without_a_5xx(
    live: str, unique_id: str, as_json: bool
) -> None:
    path = "/ui/pipelines/" + quote(unique_id, safe="") + (".json" if as_json else "")
    answer = requests.get(
        live + path, headers={"DD-API-KEY": TOKEN}, timeout=30, allow_redirects=False
    )
    assert answer.status_code in {200, 303, 404}, (path, answer.status_code, answer.text)


async def test_over_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    """A relay serving TLS marks the session cookie Secure."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    config = relay_config(
        tmp_path,
        ingest_token=TOKEN,
        tls_cert_file=str(tmp_path / "tls.crt"),
        tls_key_file=str(tmp_path / "tls.key"),
    )
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with RelayProcess(config) as relay, aiohttp.ClientSession() as client:
        login = f"https://127.0.0.1:{relay.port}/ui/login"
        form = {"token": TOKEN}
        async with client.post(login, data=form, ssl=trusted, allow_redirects=False) as answer:
            assert 303 == answer.status
            parts = {part.strip() for part in answer.headers["Set-Cookie"].split(";")}
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"} <= parts
