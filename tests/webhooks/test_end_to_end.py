"""Webhooks end to end: ``ci-relay serve`` as a process, recorded hooks in, the stand-in
intake receiving the events; a SIGKILL after the 2xx loses nothing, and secret files are
read again while the relay runs."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from relay.testing.process import RelayProcess, write_config
from relay.webhooks.github import map_github
from relay.webhooks.gitlab import PIPELINE_HOOK, map_gitlab
from tests.fake_intake import Accept, FakeIntake, Status
from tests.helpers import wait_until
from tests.webhooks.recorded import github, gitlab

GITLAB_TOKEN = "gitlab-token-0123456789"  # noqa: S105 (a test's own secret)
GITHUB_SECRET = "github-secret-0123456789"  # noqa: S105


def _config(tmp_path: Path, intake: FakeIntake, **webhooks: str) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": intake.url, "api_key": "k" * 32},
        flusher={"flush_interval_s": 0.05},
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2},
        webhooks=webhooks or {"gitlab_token": GITLAB_TOKEN, "github_secret": GITHUB_SECRET},
    )


async def _gitlab(
    client: aiohttp.ClientSession,
    relay: RelayProcess,
    payload: dict[str, Any],
    delivery: str,
    token: str = GITLAB_TOKEN,
) -> int:
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": PIPELINE_HOOK,
        "X-Gitlab-Event-UUID": delivery,
        "X-Gitlab-Token": token,
    }
    url = f"http://127.0.0.1:{relay.port}/webhooks/gitlab"
    async with client.post(url, data=orjson.dumps(payload), headers=headers) as answer:
        return answer.status


async def _github(
    client: aiohttp.ClientSession, relay: RelayProcess, kind: str, payload: dict[str, Any]
) -> int:
    body = orjson.dumps(payload)
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": kind,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": f"sha256={signature}",
    }
    url = f"http://127.0.0.1:{relay.port}/webhooks/github"
    async with client.post(url, data=body, headers=headers) as answer:
        return answer.status


def _resources(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event["attributes"]["resource"] for event in events]


async def test_both_sources_reach_the_intake_as_their_events(tmp_path: Path) -> None:
    """A GitLab Pipeline Hook and a GitHub workflow_job: 202 each, the intake receives
    exactly the events they map to, and neither secret appears in the log."""
    pipeline = gitlab("pipeline.json")
    job = github("workflow_job.completed.success")
    job["workflow_job"]["workflow_name"] = "CI"
    expected = [
        *_resources(list(map_gitlab(PIPELINE_HOOK, pipeline).events)),
        *_resources(list(map_github("workflow_job", job).events)),
    ]
    async with (
        FakeIntake(Accept()) as intake,
        aiohttp.ClientSession() as client,
        RelayProcess(_config(tmp_path, intake)) as relay,
    ):
        statuses = [
            await _gitlab(client, relay, pipeline, "d-1"),
            await _github(client, relay, "workflow_job", job),
        ]
        await intake.wait_for_events(len(expected), timeout_s=15)
        await relay.terminate()
    assert [202, 202] == statuses
    key = lambda r: (r["level"], r.get("unique_id") or r["id"])  # noqa: E731
    assert sorted(expected, key=key) == sorted(_resources(intake.accepted_events), key=key)
    logged = orjson.dumps(relay.logs).decode()
    assert (GITLAB_TOKEN not in logged, GITHUB_SECRET not in logged) == (True, True)
    assert ["github", "gitlab"] == sorted(relay.events("listening")[0]["webhooks"])


async def test_a_hook_answered_2xx_survives_sigkill_and_is_not_stored_twice(
    tmp_path: Path,
) -> None:
    """The intake down, a hook is answered 202, the relay is killed: restarted, it delivers
    the hook's events, and the same hook sent again stores nothing new."""
    pipeline = gitlab("pipeline.json")
    count = len(map_gitlab(PIPELINE_HOOK, pipeline).events)
    async with FakeIntake(Status(503)) as intake, aiohttp.ClientSession() as client:
        config = _config(tmp_path, intake)
        async with RelayProcess(config) as relay:
            first = await _gitlab(client, relay, pipeline, "d-1")
            await intake.wait_for_requests(1, timeout_s=15)
            await relay.kill()
        intake.default = Accept()
        async with RelayProcess(config) as relay:
            again = await _gitlab(client, relay, pipeline, "d-2")
            await intake.wait_for_events(count, timeout_s=15)
            await relay.terminate()
    assert (202, 200) == (first, again)
    assert count == len(intake.accepted_events)


async def test_a_rewritten_token_file_takes_over_and_is_never_logged(tmp_path: Path) -> None:
    """The GitLab token read from a file: rewritten, the new token is accepted within seconds
    and the old one refused; neither appears in the log."""
    token_file = tmp_path / "gitlab-token"
    token_file.write_text(GITLAB_TOKEN + "\n")
    new_token = "rotated-token-9876543210"  # noqa: S105
    async with FakeIntake(Accept()) as intake, aiohttp.ClientSession() as client:
        config = _config(tmp_path, intake, gitlab_token_file=str(token_file))
        async with RelayProcess(config) as relay:
            before = await _gitlab(client, relay, gitlab("pipeline.json"), "a", GITLAB_TOKEN)
            token_file.write_text(new_token + "\n")
            await wait_until(
                lambda: bool(relay.events("key file read: a new value is in force")),
                10,
                "the new token read",
            )
            old = await _gitlab(client, relay, gitlab("job.json"), "b", GITLAB_TOKEN)
            new = await _gitlab(client, relay, gitlab("pipeline.json"), "c", new_token)
            await relay.terminate()
    assert (202, 401, 200) == (before, old, new)  # the same pipeline again: a duplicate
    logged = orjson.dumps(relay.logs).decode()
    assert GITLAB_TOKEN not in logged
    assert new_token not in logged
