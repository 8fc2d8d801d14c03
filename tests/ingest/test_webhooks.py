"""GitLab and GitHub webhooks at the relay's edge: real HTTP, a real outbox file.

Each answer the CI server can get (2xx once committed, 401, 400, 404, 503) and what is
stored for it; the payloads are the recorded ones of tests/webhooks/payloads.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from relay.config import OutboxSettings
from relay.ingest.webhooks import UNUSABLE_EXCERPT_BYTES
from relay.keyfiles import KeyFile
from relay.ops.status import render
from relay.store import deadletters
from relay.webhooks.github import map_github
from relay.webhooks.gitlab import JOB_HOOK, PIPELINE_HOOK, map_gitlab
from tests.helpers import RunningRelay, serving
from tests.webhooks.recorded import github, gitlab

GITLAB_TOKEN = "gitlab-hook-token"  # noqa: S105 (a test's own secret)
GITHUB_SECRET = "github-hook-secret"  # noqa: S105


def secrets(
    gitlab_token: str | None = GITLAB_TOKEN, github_secret: str | None = GITHUB_SECRET
) -> dict[str, KeyFile]:
    def held(value: str | None) -> SecretStr | None:
        return None if value is None else SecretStr(value)

    return {
        "gitlab": KeyFile("webhooks.gitlab_token_file", held(gitlab_token), None),
        "github": KeyFile("webhooks.github_secret_file", held(github_secret), None),
    }


@pytest.fixture
async def relay(outbox_settings: OutboxSettings) -> AsyncIterator[RunningRelay]:
    async with serving(outbox_settings, webhook_secrets=secrets()) as running:
        yield running


def gitlab_headers(
    kind: str, token: str | None = GITLAB_TOKEN, delivery: str | None = None
) -> dict[str, str]:
    headers = {"X-Gitlab-Event": kind, "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4())}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return headers


def signed(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(kind: str, body: bytes, delivery: str | None = None) -> dict[str, str]:
    return {
        "X-GitHub-Event": kind,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signed(body),
    }


async def post(
    relay: RunningRelay, source: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``/webhooks/<source>`` as JSON: the status and the decoded answer."""
    async with relay.client.post(
        f"{relay.base_url}/webhooks/{source}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    ) as answer:
        found: dict[str, Any] = orjson.loads(await answer.read())
        return answer.status, found


async def post_gitlab(
    relay: RunningRelay, kind: str, payload: dict[str, Any], **headers: Any
) -> tuple[int, dict[str, Any]]:
    return await post(relay, "gitlab", orjson.dumps(payload), gitlab_headers(kind, **headers))


async def post_github(
    relay: RunningRelay, kind: str, payload: dict[str, Any], delivery: str | None = None
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps(payload)
    return await post(relay, "github", body, github_headers(kind, body, delivery))


def stored(path: Path) -> list[dict[str, Any]]:
    """The resources in the outbox, in order."""
    with closing(sqlite3.connect(path)) as db:
        bodies = [body for (body,) in db.execute("SELECT body FROM events ORDER BY id")]
    return [orjson.loads(body)["attributes"]["resource"] for body in bodies]


def named_job() -> dict[str, Any]:
    """The recorded successful workflow_job, given the workflow_name recent GitHub sends."""
    payload = github("workflow_job.completed.success")
    payload["workflow_job"]["workflow_name"] = "CI"
    return payload


async def test_gitlab_pipeline_hook_is_stored_as_its_events(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A Pipeline Hook with the right token: 202 once its pipeline, stages and jobs are
    committed, exactly the events the mapping makes."""
    payload = gitlab("pipeline.json")
    status, answer = await post_gitlab(relay, PIPELINE_HOOK, payload)
    expected = [e["attributes"]["resource"] for e in map_gitlab(PIPELINE_HOOK, payload).events]
    assert (202, {"status": "stored", "events": len(expected), "dead_letters": 0}) == (
        status,
        answer,
    )
    assert expected == stored(outbox_settings.path)


async def test_github_workflow_job_is_stored_as_its_job_and_steps(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A signed workflow_job: 202 once its job and step events are committed."""
    payload = named_job()
    status, answer = await post_github(relay, "workflow_job", payload)
    expected = [e["attributes"]["resource"] for e in map_github("workflow_job", payload).events]
    assert (202, "stored") == (status, answer["status"])
    assert expected == stored(outbox_settings.path)
    steps = len(expected) - 1
    assert steps > 0
    assert ["job"] + ["step"] * steps == [resource["level"] for resource in expected]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (None, "X-Gitlab-Token is missing"),
        ("wrong", "X-Gitlab-Token does not match webhooks.gitlab_token"),
        (GITLAB_TOKEN + "x", "X-Gitlab-Token does not match webhooks.gitlab_token"),
    ],
)
async def test_gitlab_without_its_token_is_401_and_stores_nothing(
    relay: RunningRelay, outbox_settings: OutboxSettings, token: str | None, problem: str
) -> None:
    """A missing or wrong X-Gitlab-Token: 401 in Datadog's error shape, nothing stored."""
    status, answer = await post_gitlab(relay, PIPELINE_HOOK, gitlab("pipeline.json"), token=token)
    assert 401 == status
    assert answer["errors"][0]["detail"].startswith(problem)
    assert [] == stored(outbox_settings.path)


def _one_byte_changed(body: bytes) -> bytes:
    index = body.index(b'"completed"') + 1
    return body[:index] + b"C" + body[index + 1 :]


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        (lambda body: None, "X-Hub-Signature-256 is missing"),
        (lambda body: signed(body).replace("sha256=", "sha1="), "must be sha256="),
        (lambda body: signed(body).removeprefix("sha256="), "must be sha256="),
        (lambda body: signed(body, "another secret"), "does not match"),
        (lambda body: signed(_one_byte_changed(body)), "does not match"),
        (lambda body: signed(body)[:-1], "does not match"),
    ],
    ids=["missing", "sha1-prefix", "no-prefix", "other-secret", "body-changed-by-one-byte", "cut"],
)
async def test_github_without_a_valid_signature_is_401(
    relay: RunningRelay, outbox_settings: OutboxSettings, signature: Any, problem: str
) -> None:
    """The signature must be sha256= and the HMAC of these very bytes with the secret."""
    body = orjson.dumps(github("workflow_run.completed"))
    headers = github_headers("workflow_run", body)
    given = signature(body)
    if given is None:
        del headers["X-Hub-Signature-256"]
    else:
        headers["X-Hub-Signature-256"] = given
    status, answer = await post(relay, "github", body, headers)
    assert 401 == status
    assert problem in answer["errors"][0]["detail"]
    assert [] == stored(outbox_settings.path)


async def test_github_signature_in_upper_case_hex_is_accepted(relay: RunningRelay) -> None:
    """Hex digits are case-insensitive: an upper-case digest is the same signature."""
    body = orjson.dumps(github("workflow_run.completed"))
    headers = github_headers("workflow_run", body)
    headers["X-Hub-Signature-256"] = "sha256=" + signed(body).removeprefix("sha256=").upper()
    assert 202 == (await post(relay, "github", body, headers))[0]


@pytest.mark.parametrize("source", ["gitlab", "github"])
async def test_a_source_without_its_secret_is_404_naming_the_setting(
    outbox_settings: OutboxSettings, source: str
) -> None:
    """A source whose secret is not set is not served: 404 saying which setting serves it."""
    async with serving(outbox_settings, webhook_secrets=secrets(None, None)) as relay:
        status, answer = await post(relay, source, b"{}", {})
    setting = {"gitlab": "webhooks.gitlab_token", "github": "webhooks.github_secret"}[source]
    assert 404 == status
    detail = answer["errors"][0]["detail"]
    assert setting in detail
    assert f"CI_RELAY_{setting.upper().replace('.', '__')}" in detail


@pytest.mark.parametrize(
    ("source", "kind", "payload"),
    [
        ("github", "ping", {"zen": "Keep it logically awesome.", "hook_id": 1}),
        ("github", "push", {"ref": "refs/heads/main"}),
        ("gitlab", "Push Hook", {"object_kind": "push"}),
    ],
)
async def test_kinds_the_relay_does_not_use_are_2xx_and_counted(
    relay: RunningRelay,
    outbox_settings: OutboxSettings,
    source: str,
    kind: str,
    payload: dict[str, Any],
) -> None:
    """A ping, a push: 200 with the reason, nothing stored (the hook must not be disabled)."""
    body = orjson.dumps(payload)
    headers = gitlab_headers(kind) if source == "gitlab" else github_headers(kind, body)
    status, answer = await post(relay, source, body, headers)
    assert (200, "ignored") == (status, answer["status"])
    assert answer["reason"]
    assert [] == stored(outbox_settings.path)


async def test_a_queued_job_is_ignored(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A workflow_job that is only queued makes no event yet."""
    payload = named_job()
    payload["action"] = "queued"
    status, answer = await post_github(relay, "workflow_job", payload)
    assert (200, "ignored") == (status, answer["status"])
    assert [] == stored(outbox_settings.path)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body is a JSON object"),
        (orjson.dumps({"object_kind": "push"}), "a GitLab Pipeline Hook has object_kind pipeline"),
        (orjson.dumps(gitlab("job.json")), "a GitLab Pipeline Hook has object_kind pipeline"),
    ],
    ids=["not-json", "array", "push-body", "job-body"],
)
async def test_a_body_that_is_not_its_kind_is_400(
    relay: RunningRelay, outbox_settings: OutboxSettings, body: bytes, problem: str
) -> None:
    """Not JSON, or JSON that is not what X-Gitlab-Event says: 400 with the reason."""
    status, answer = await post(relay, "gitlab", body, gitlab_headers(PIPELINE_HOOK))
    assert 400 == status
    assert problem in answer["errors"][0]["detail"]
    assert [] == stored(outbox_settings.path)


async def test_form_encoded_github_hook_is_400_saying_to_send_json(relay: RunningRelay) -> None:
    """GitHub's other content type: refused with what to change, not a 500."""
    body = b"payload=%7B%7D"
    headers = github_headers("workflow_run", body) | {
        "Content-Type": "application/x-www-form-urlencoded"
    }
    async with relay.client.post(
        f"{relay.base_url}/webhooks/github", data=body, headers=headers
    ) as answer:
        assert 400 == answer.status
        assert "application/json" in (await answer.json())["errors"][0]["detail"]


async def test_the_same_delivery_twice_stores_nothing_new(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A delivery id seen before: 200 duplicate, whatever the body."""
    payload = gitlab("pipeline.json")
    first = await post_gitlab(relay, PIPELINE_HOOK, payload, delivery="d-1")
    again = await post_gitlab(relay, PIPELINE_HOOK, payload, delivery="d-1")
    assert 202 == first[0]
    assert (200, {"status": "duplicate", "events": 0, "dead_letters": 0}) == again
    assert first[1]["events"] == len(stored(outbox_settings.path))


async def test_a_redelivery_under_a_new_id_stores_nothing_new(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """GitHub's manual redelivery has a new X-GitHub-Delivery: the run is stored once."""
    payload = github("workflow_run.completed")
    assert 202 == (await post_github(relay, "workflow_run", payload, delivery="a"))[0]
    status, answer = await post_github(relay, "workflow_run", payload, delivery="b")
    assert (200, "duplicate") == (status, answer["status"])
    assert 1 == len(stored(outbox_settings.path))


async def test_each_status_of_a_pipeline_is_stored_once(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """GitLab announces every status change: running twice is one running event, then the
    finished hook adds the finished pipeline and its jobs."""
    finished = gitlab("pipeline.json")
    running = copy.deepcopy(finished)
    running["object_attributes"]["status"] = "running"
    running["object_attributes"]["finished_at"] = None
    for payload in (running, running, finished, finished):
        await post_gitlab(relay, PIPELINE_HOOK, payload)
    levels = [(r["level"], r["status"]) for r in stored(outbox_settings.path)]
    assert 1 == levels.count(("pipeline", "running"))
    assert 1 == sum(1 for level, status in levels if level == "pipeline" and status != "running")
    finished_events = len(map_gitlab(PIPELINE_HOOK, finished).events)
    assert 1 + finished_events == len(levels)


async def test_a_job_hook_then_its_pipeline_hook_sends_the_job_once(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A Job Hook's job is sent at once; the same build in the Pipeline Hook is not sent again."""
    pipeline = gitlab("pipeline.json")
    build = next(b for b in pipeline["builds"] if b["status"] == "success")
    job = gitlab("job.json")
    job |= {
        "build_id": build["id"],
        "build_name": build["name"],
        "build_stage": build["stage"],
        "build_status": "success",
        "build_started_at": build["started_at"],
        "build_finished_at": build["finished_at"],
        "build_created_at": build["created_at"],
        "pipeline_id": pipeline["object_attributes"]["id"],
        "project_id": pipeline["project"]["id"],
    }
    job["repository"]["homepage"] = pipeline["project"]["web_url"]
    assert 202 == (await post_gitlab(relay, JOB_HOOK, job))[0]
    status, answer = await post_gitlab(relay, PIPELINE_HOOK, pipeline)
    assert 202 == status
    jobs = [r for r in stored(outbox_settings.path) if r["level"] == "job"]
    assert len({r["id"] for r in jobs}) == len(jobs)
    assert len(map_gitlab(PIPELINE_HOOK, pipeline).events) - 1 == answer["events"]


async def test_content_past_the_intake_window_is_a_dead_letter_and_2xx(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A pipeline that ended 20 hours ago cannot be sent: 202, kept as an invalid dead letter
    saying why, and the same hook again makes no second one."""
    payload = github("workflow_run.completed", ago=timedelta(hours=20))
    first = await post_github(relay, "workflow_run", payload)
    again = await post_github(relay, "workflow_run", payload)
    assert (202, "dead_lettered", 1) == (first[0], first[1]["status"], first[1]["dead_letters"])
    assert (200, "duplicate") == (again[0], again[1]["status"])
    (letter,) = await deadletters.list_dead_letters(outbox_settings.path)
    assert "invalid" == letter.reason
    assert "GitHub workflow_run: the event it makes is not valid" in letter.detail
    assert "more than 18 hours in the past" in letter.detail
    assert "pipeline" == letter.resource()["level"]
    assert [] == stored(outbox_settings.path)


async def test_an_unusable_delivery_is_a_dead_letter_with_its_payload(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """A job without workflow_name cannot name its pipeline: 202, a dead letter holding the
    payload as received and the reason."""
    payload = github("workflow_job.completed.failure")
    status, answer = await post_github(relay, "workflow_job", payload)
    assert (202, "dead_lettered") == (status, answer["status"])
    (letter,) = await deadletters.list_dead_letters(outbox_settings.path)
    assert ("invalid", "GitHub workflow_job has no workflow_name to name its pipeline") == (
        letter.reason,
        letter.detail,
    )
    assert payload == orjson.loads(letter.body)


async def test_a_full_outbox_is_503_with_retry_after_then_stored(tmp_path: Path) -> None:
    """No room: 503 with Retry-After and nothing kept, not even the keys; sent again once
    there is room, the same delivery is stored."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", max_events=3)
    async with serving(settings, webhook_secrets=secrets()) as relay:
        payload = gitlab("pipeline.json")
        headers = gitlab_headers(PIPELINE_HOOK, delivery="full-1")
        async with relay.client.post(
            f"{relay.base_url}/webhooks/gitlab",
            data=orjson.dumps(payload),
            headers={"Content-Type": "application/json", **headers},
        ) as answer:
            assert (503, "7") == (answer.status, answer.headers.get("Retry-After"))
        assert [] == stored(settings.path)
    roomy = OutboxSettings(path=settings.path)
    async with serving(roomy, webhook_secrets=secrets()) as relay:
        status, _ = await post_gitlab(relay, PIPELINE_HOOK, payload, delivery="full-1")
    assert 202 == status


async def test_a_failing_store_is_503(tmp_path: Path) -> None:
    """The outbox file locked by another process: 503 with Retry-After, never a 2xx."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", busy_timeout_s=0.1)
    async with serving(settings, webhook_secrets=secrets()) as relay:
        lock = sqlite3.connect(settings.path, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            status, answer = await post_gitlab(relay, PIPELINE_HOOK, gitlab("pipeline.json"))
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert 503 == status
        assert "cannot store it now" in answer["errors"][0]["detail"]
        assert 202 == (await post_gitlab(relay, PIPELINE_HOOK, gitlab("pipeline.json")))[0]


async def test_get_on_a_webhook_path_is_405(relay: RunningRelay) -> None:
    """Only POST: a GET gets 405 with Allow: POST."""
    async with relay.client.get(f"{relay.base_url}/webhooks/gitlab") as answer:
        assert (405, "POST") == (answer.status, answer.headers["Allow"])


async def test_deliveries_are_counted_in_metrics_and_status(relay: RunningRelay) -> None:
    """/metrics counts deliveries by source, kind and outcome; /status shows each source."""
    payload = gitlab("pipeline.json")
    await post_gitlab(relay, PIPELINE_HOOK, payload, delivery="m-1")
    await post_gitlab(relay, PIPELINE_HOOK, payload, delivery="m-1")
    await post_gitlab(relay, PIPELINE_HOOK, payload, token="wrong")  # noqa: S106
    await post_github(relay, "ping", {"zen": "Design for failure."})
    async with relay.client.get(f"{relay.base_url}/metrics") as answer:
        metrics = await answer.text()
    async with relay.client.get(f"{relay.base_url}/status") as answer:
        status = await answer.json()
    stored_events = len(map_gitlab(PIPELINE_HOOK, payload).events)
    received = "ci_relay_webhooks_received_total"
    for line in (
        f'{received}{{kind="pipeline",outcome="stored",source="gitlab"}} 1.0',
        f'{received}{{kind="pipeline",outcome="duplicate",source="gitlab"}} 1.0',
        f'{received}{{kind="pipeline",outcome="unauthorized",source="gitlab"}} 1.0',
        f'{received}{{kind="ping",outcome="ignored",source="github"}} 1.0',
        f'ci_relay_webhook_events_stored_total{{source="gitlab"}} {stored_events}.0',
        'ci_relay_webhook_source_enabled{source="gitlab"} 1.0',
    ):
        assert line in metrics.splitlines()
    assert {
        "enabled": True,
        "path": "/webhooks/gitlab",
        "deliveries": {"duplicate": 1, "stored": 1, "unauthorized": 1},
        "events_since_start": stored_events,
        "dead_letters_since_start": 0,
    } == status["webhooks"]["gitlab"]
    assert {"ignored": 1} == status["webhooks"]["github"]["deliveries"]


async def test_unknown_kind_headers_are_counted_as_other(relay: RunningRelay) -> None:
    """A kind header the relay does not know is counted under kind other, so that what a
    sender puts in a header cannot grow the metrics without bound."""
    for number in range(3):
        body = orjson.dumps({"n": number})
        await post(relay, "github", body, github_headers(f"made-up-{number}", body))
    async with relay.client.get(f"{relay.base_url}/metrics") as answer:
        metrics = await answer.text()
    line = 'ci_relay_webhooks_received_total{kind="other",outcome="ignored",source="github"} 3.0'
    assert line in metrics.splitlines()


async def test_a_large_unusable_payload_is_kept_as_valid_json(
    relay: RunningRelay, outbox_settings: OutboxSettings
) -> None:
    """Past the excerpt size, the dead letter keeps the payload's start as a JSON string with
    its full size, so that listing dead letters as JSON stays valid JSON."""
    payload = github("workflow_job.completed.failure")
    payload["padding"] = "x" * (UNUSABLE_EXCERPT_BYTES + 1000)
    status, _ = await post_github(relay, "workflow_job", payload)
    assert 202 == status
    (letter,) = await deadletters.list_dead_letters(outbox_settings.path)
    kept = orjson.loads(letter.body)
    assert len(orjson.dumps(payload)) == kept["payload_bytes"]
    assert orjson.dumps(payload).decode().startswith(kept["payload_start"])
    assert len(letter.body) < UNUSABLE_EXCERPT_BYTES + 1000


async def test_ci_relay_status_prints_a_line_per_served_source(relay: RunningRelay) -> None:
    """`ci-relay status` shows what each served source's deliveries became."""
    await post_gitlab(relay, PIPELINE_HOOK, gitlab("pipeline.json"))
    await post_github(relay, "ping", {"zen": "Half measures are as bad as nothing at all."})
    async with relay.client.get(f"{relay.base_url}/status") as answer:
        shown = render(await answer.json(), relay.base_url).splitlines()
    events = len(map_gitlab(PIPELINE_HOOK, gitlab("pipeline.json")).events)
    assert f"webhooks      gitlab: 1 stored ({events} events stored)" in shown
    assert "webhooks      github: 1 ignored (0 events stored)" in shown
