"""The page (``GET /ui``) in a real headless Chromium against a real relay (``ci-relay serve
--dry-run`` over a real outbox): the list, the waterfall of a pipeline whose answers are
worked out by hand (``tests/ui/fixture.py``), live updates, the Content-Security-Policy, and
the login that keeps the ingest token out of URLs and logs.

Set ``CI_RELAY_SCREENSHOT_DIR`` to save the waterfall as ``ui-waterfall.png`` there (the
README's picture: ``CI_RELAY_SCREENSHOT_DIR=docs``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from relay.testing.process import RelayProcess
from relay.ui.access import COOKIE
from relay.ui.routes import CONTENT_SECURITY_POLICY
from tests.helpers import JSON
from tests.ui.browser import console_errors, installed, rect, requested_urls, style, wait
from tests.ui.conftest import Relay, relay_config
from tests.ui.fixture import (
    BARS,
    CRITICAL,
    MISMATCHED_JOB,
    PIPELINE_ID,
    PIPELINE_NAME,
    QUEUED,
    SPAN_S,
    Bar,
    small,
    web_app,
)

pytestmark = pytest.mark.skipif(
    not installed(),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
# A unique id that must survive a URL: a space, '#', '?', '%' and '&'.
AWKWARD_ID = "nightly #2 ?a=b&c=100%"


def listed(driver: webdriver.Chrome) -> list[str]:
    """The unique ids the list shows, in its order."""
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#pipelines [data-unique-id]')]"
        ".map(e => e.dataset.uniqueId);"
    )
    return ids


def item(driver: webdriver.Chrome, unique_id: str) -> WebElement:
    """The list's element for ``unique_id``, once the list shows it."""
    wait(driver).until(lambda d: unique_id in listed(d))
    [found] = [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, "#pipelines [data-unique-id]")
        if e.get_attribute("data-unique-id") == unique_id
    ]
    return found


def drawn(driver: webdriver.Chrome, bars: int) -> list[WebElement]:
    """The waterfall's bars, once it has drawn ``bars`` of them."""
    wait(driver).until(
        lambda d: d.find_element(By.ID, "waterfall").get_attribute("data-bars") == str(bars)
    )
    return driver.find_elements(By.CSS_SELECTOR, "#waterfall .bar")


def bar_of(element: WebElement) -> Bar:
    return Bar(
        level=str(element.get_attribute("data-level")),
        id=str(element.get_attribute("data-id")),
        status=str(element.get_attribute("data-status")),
        critical=element.get_attribute("data-critical") == "true",
    )


def path_of(driver: webdriver.Chrome) -> str:
    path: str = driver.execute_script("return location.pathname;")
    return path


async def test_the_list_shows_the_pipeline_with_its_status_and_links_to_its_waterfall(
    dry_relay: Relay, browser: webdriver.Chrome
) -> None:
    """One element per pipeline carrying its unique id and status, with its name, duration,
    jobs and problems; it links to the pipeline's waterfall."""
    await dry_relay.post(web_app())
    browser.get(dry_relay.base_url + "/ui")
    pipeline = item(browser, PIPELINE_ID)
    wait(browser).until(lambda _: pipeline.get_attribute("data-status") == "error")
    cells = {
        name: pipeline.find_element(By.CSS_SELECTOR, f".{name}").text
        for name in ("title", "duration", "jobs", "problems-count")
    }
    assert {
        "title": PIPELINE_NAME,
        "duration": "1 min 40 s",
        "jobs": "3",
        "problems-count": "1",
    } == cells
    assert f"{dry_relay.base_url}/ui/pipelines/{PIPELINE_ID}" == pipeline.get_attribute("href")
    pipeline.click()
    drawn(browser, len(BARS))
    assert f"/ui/pipelines/{PIPELINE_ID}" == path_of(browser)
    assert [] == console_errors(browser)


async def test_the_waterfall_has_a_bar_per_event_queue_times_apart_and_the_critical_path(
    dry_relay: Relay, browser: webdriver.Chrome
) -> None:
    """Ten events, ten bars with the right data-*; exactly jb-compile and jb-lint critical
    (worked out by hand); each queue time drawn before its job's start, in proportion; the
    mismatched pipeline_name listed as a problem; the dry run said; no console error."""
    await dry_relay.post(web_app())
    browser.get(f"{dry_relay.base_url}/ui/pipelines/{PIPELINE_ID}")
    bars = drawn(browser, len(BARS))

    assert sorted(BARS, key=repr) == sorted(map(bar_of, bars), key=repr)
    critical = [bar_of(b).id for b in bars if bar_of(b).critical]
    assert list(CRITICAL) == critical
    _assert_queues_drawn_before_their_runs(browser)
    _assert_status_and_path_are_seen(browser)
    problems = browser.find_elements(By.CSS_SELECTOR, "#problems [data-rule]")
    assert [("pipeline-name-mismatch", "job", MISMATCHED_JOB)] == [
        (p.get_attribute("data-rule"), p.get_attribute("data-level"), p.get_attribute("data-id"))
        for p in problems
    ]
    assert "web-app-nightly" in problems[0].text
    banner = browser.find_element(By.ID, "dry-run")
    assert banner.is_displayed()
    assert "dry run: nothing is sent" in banner.text.lower()
    _save_screenshot(browser)
    assert [] == console_errors(browser)


def _assert_queues_drawn_before_their_runs(driver: webdriver.Chrome) -> None:
    """Only the jobs with a queue time have a queued part; it ends where the run begins and
    is as long as the queue time on the axis (the pipeline's 100 s span the track)."""
    queues = driver.find_elements(By.CSS_SELECTOR, "#waterfall [data-queue-for]")
    assert set(QUEUED) == {q.get_attribute("data-queue-for") for q in queues}
    for queue in queues:
        job_id = str(queue.get_attribute("data-queue-for"))
        track = rect(driver, queue.find_element(By.XPATH, ".."))
        run = rect(driver, queue.find_element(By.XPATH, "../*[@data-level='job']"))
        drawn_at = rect(driver, queue)
        start_s, end_s = QUEUED[job_id]
        scale = track["width"] / SPAN_S
        assert track["left"] + start_s * scale == pytest.approx(drawn_at["left"], abs=1.5)
        assert (end_s - start_s) * scale == pytest.approx(drawn_at["width"], abs=1.5)
        assert drawn_at["right"] == pytest.approx(run["left"], abs=1.5)


def _assert_status_and_path_are_seen(driver: webdriver.Chrome) -> None:
    """Colours follow the status; the critical bars, and only they, are outlined."""
    by_id = {bar_of(b).id: b for b in driver.find_elements(By.CSS_SELECTOR, "#waterfall .bar")}
    colour = {job: style(driver, by_id[job], "background-color") for job in ("jb-unit", "jb-lint")}
    assert colour["jb-unit"] != colour["jb-lint"]
    assert style(driver, by_id["jb-lint"], "background-color") == style(
        driver, by_id["jb-compile"], "background-color"
    )
    outlines = {id_: style(driver, bar, "outline-style") for id_, bar in by_id.items()}
    assert {id_ for id_, outline in outlines.items() if outline != "none"} == set(CRITICAL)


def _save_screenshot(driver: webdriver.Chrome) -> None:
    folder = os.environ.get("CI_RELAY_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page = driver.find_element(By.TAG_NAME, "body")  # as tall as what it shows
        assert page.screenshot(str(Path(folder) / "ui-waterfall.png"))


async def test_a_pipeline_posted_while_the_list_is_open_appears_without_a_reload(
    dry_relay: Relay, browser: webdriver.Chrome
) -> None:
    """The list polls its JSON: a new pipeline shows up in the same document, newest first,
    and its link (an id that needs escaping in a URL) opens its waterfall."""
    await dry_relay.post(web_app())
    browser.get(dry_relay.base_url + "/ui")
    item(browser, PIPELINE_ID)
    browser.execute_script("window.stillTheSameDocument = true;")
    await dry_relay.post(small(AWKWARD_ID, "nightly"))
    newcomer = item(browser, AWKWARD_ID)
    assert browser.execute_script("return window.stillTheSameDocument === true;")
    assert [AWKWARD_ID, PIPELINE_ID] == listed(browser)
    assert "success" == newcomer.get_attribute("data-status")
    newcomer.click()
    bars = drawn(browser, 2)
    assert {("pipeline", AWKWARD_ID), ("job", f"{AWKWARD_ID}-job")} == {
        (b.get_attribute("data-level"), b.get_attribute("data-id")) for b in bars
    }
    assert "nightly" == browser.find_element(By.ID, "title").text
    assert [] == console_errors(browser)


async def test_the_page_reaches_only_the_relays_own_origin(
    dry_relay: Relay, browser: webdriver.Chrome
) -> None:
    """Every answer of the page carries the policy; under it the page works, while its
    script can reach no other origin (the same relay as ``localhost`` included) and runs
    no inline script."""
    await dry_relay.post(web_app())
    for path in ("/ui", f"/ui/pipelines/{PIPELINE_ID}", "/ui/pipelines.json", "/ui/login"):
        async with dry_relay.client.get(dry_relay.base_url + path) as answer:
            assert 200 == answer.status
            policy = answer.headers["Content-Security-Policy"]
        assert CONTENT_SECURITY_POLICY == policy
        assert {"default-src 'self'", "connect-src 'self'"} <= set(policy.split("; "))
    browser.get(dry_relay.base_url + "/ui")
    item(browser, PIPELINE_ID)
    assert [] == console_errors(browser)
    elsewhere = dry_relay.base_url.replace("127.0.0.1", "localhost") + "/ui/pipelines.json"
    probe = _probe(browser, elsewhere)
    violated = ["script-src-elem", "connect-src"]
    assert {"own": 200, "elsewhere": "blocked", "violated": violated, "inline": False} == probe
    violations = [entry["message"] for entry in console_errors(browser)]
    assert violations
    assert all("Content Security Policy" in message for message in violations), violations


_PROBE = """
const elsewhere = arguments[0];
const done = arguments[arguments.length - 1];
(async () => {
  const found = {violated: []};
  document.addEventListener("securitypolicyviolation", (e) => {
    found.violated.push(e.effectiveDirective);
  });
  const script = document.createElement("script");
  script.textContent = "window.inlineRan = true;";
  document.body.append(script);
  found.inline = window.inlineRan === true;
  found.own = (await fetch("/ui/pipelines.json")).status;
  try {
    await fetch(elsewhere);
    found.elsewhere = "reached";
  } catch (error) {
    found.elsewhere = "blocked";
  }
  await new Promise((resolve) => setTimeout(resolve, 200));
  done(found);
})();
"""


def _probe(driver: webdriver.Chrome, elsewhere: str) -> dict[str, Any]:
    """Fetch from the page's origin and from ``elsewhere``; try an inline script."""
    result: dict[str, Any] = driver.execute_async_script(_PROBE, elsewhere)
    return result


async def test_with_an_ingest_token_the_page_needs_a_login_that_keeps_it_out_of_urls(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    """The JSON refuses a request without the token (403, Datadog's shape) and takes it in
    a header; a browser is sent to the form, whose POST sets an HttpOnly, SameSite=Strict
    cookie derived from the token for /ui; then the pages work. The token is in no URL the
    browser asked for, in no cookie, and in none of the relay's log lines."""
    token = "ui-" + secrets.token_hex(16)
    config = relay_config(tmp_path, ingest_token=token)
    async with (
        RelayProcess(config, arguments=("--dry-run",)) as process,
        aiohttp.ClientSession() as client,
    ):
        relay = Relay(process, client, JSON | {"DD-API-KEY": token})
        await relay.post(web_app())
        await _assert_json_needs_the_token(relay, token)
        browser.get(f"{relay.base_url}/ui/pipelines/{PIPELINE_ID}")
        wait(browser).until(lambda d: path_of(d) == "/ui/login")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        drawn(browser, len(BARS))
        assert f"/ui/pipelines/{PIPELINE_ID}" == path_of(browser)
        [cookie] = browser.get_cookies()
        assert (COOKIE, True, "Strict", "/ui") == (
            cookie["name"],
            cookie["httpOnly"],
            cookie["sameSite"],
            cookie["path"],
        )
        assert token not in cookie["value"]
        assert "" == browser.execute_script("return document.cookie;")
        browser.get(relay.base_url + "/ui")
        item(browser, PIPELINE_ID)
        urls = requested_urls(browser)
        assert any("/ui/login" in url for url in urls)
        assert [] == [url for url in urls if token in url]
        assert [] == console_errors(browser)
        await process.terminate()
    assert token.encode() not in orjson.dumps(process.logs)


async def _assert_json_needs_the_token(relay: Relay, token: str) -> None:
    url = relay.base_url + "/ui/pipelines.json"
    async with relay.client.get(url) as answer:
        assert 403 == answer.status
        [error] = (await answer.json())["errors"]
        assert ("403", "Forbidden") == (error["status"], error["title"])
    for header in ({"DD-API-KEY": token}, {"Authorization": f"Bearer {token}"}):
        async with relay.client.get(url, headers=header) as answer:
            assert 200 == answer.status
    async with relay.client.get(url, headers={"Cookie": f"{COOKIE}={token}"}) as answer:
        assert 403 == answer.status  # the token itself is not a session
    login = relay.base_url + "/ui/login"
    async with relay.client.post(login, data={"token": "wrong", "next": "/ui"}) as answer:
        assert 403 == answer.status
        assert COOKIE not in answer.cookies
    async with relay.client.get(relay.base_url + "/ui", allow_redirects=False) as answer:
        assert 303 == answer.status
        assert "/ui/login?next=%2Fui" == answer.headers["Location"]
