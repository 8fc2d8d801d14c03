"""GitHub Actions webhooks mapped to pipeline, job and step events (relay.webhooks.github).

The payloads are octokit/webhooks' recorded examples (payloads/github/README.md), with every time
shifted to just before now; cases the example set lacks are edited copies, as each test says.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from relay.contract.schema import validate_events
from relay.webhooks.github import map_github, run_unique_id
from relay.webhooks.mapped import Mapped, WrongKind, derived_id, unusable
from tests.webhooks.recorded import github


def recorded(name: str) -> dict[str, Any]:
    """A recorded payload whose latest time is a minute ago (its time differences kept)."""
    return github(name)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def resources(mapped: Mapped) -> list[dict[str, Any]]:
    """The mapped resources, after checking the intake's schema accepts every event."""
    assert mapped.ignored is None
    validate_events(list(mapped.events))
    return [item["attributes"]["resource"] for item in mapped.events]


def named_job(name: str = "workflow_job.completed.failure") -> dict[str, Any]:
    """A recorded job payload given the workflow_name the older examples lack (edited copy)."""
    payload = recorded(name)
    payload["workflow_job"]["workflow_name"] = "test"
    return payload


def run_with(**fields: Any) -> dict[str, Any]:
    """The recorded completed run with ``fields`` of its workflow_run replaced (edited copy)."""
    payload = recorded("workflow_run.completed")
    payload["workflow_run"] |= fields
    return payload


def test_completed_run_is_a_finished_pipeline_event() -> None:
    """A completed workflow_run makes one valid pipeline event with its name, times and commit."""
    payload = recorded("workflow_run.completed")
    run = payload["workflow_run"]
    mapped = map_github("workflow_run", payload)
    [pipeline] = resources(mapped)
    expected_id = derived_id("github", 300029405, "run", 289782451, 1)
    expected_git = {
        "repository_url": "https://github.com/octo-org/octo-repo.git",
        "sha": "3484a3fb816e0859fd6e1cea078d76385ff50625",
        "branch": "master",
        "default_branch": "master",
        "message": "build(test): check workflow run event payload",
        "author_name": "Matthias Fax",
        "author_email": "matfax@users.noreply.github.com",
        "author_time": run["head_commit"]["timestamp"],
        "committer_name": "GitHub",
        "committer_email": "noreply@github.com",
    }
    assert {
        "level": "pipeline",
        "unique_id": expected_id,
        "pipeline_id": "289782451",
        # The recorded workflow_run.name is empty: the workflow's name stands in.
        "name": "test",
        "url": "https://github.com/octo-org/octo-repo/actions/runs/289782451",
        "start": run["run_started_at"],
        "end": run["updated_at"],
        "status": "success",
        "partial_retry": False,
        "is_manual": False,
        "git": expected_git,
    } == pipeline
    assert ("github:300029405:run:289782451:1:success",) == mapped.keys


def test_in_progress_run_is_a_running_pipeline_with_the_same_unique_id() -> None:
    """An in_progress workflow_run (edited copy: no such recorded example) is a running pipeline
    without an end, under the unique_id the same attempt's completed hook gets."""
    payload = run_with(status="in_progress", conclusion=None)
    payload["action"] = "in_progress"
    [running] = resources(map_github("workflow_run", payload))
    [finished] = resources(map_github("workflow_run", recorded("workflow_run.completed")))
    assert ("running", finished["unique_id"]) == (running["status"], running["unique_id"])
    assert "end" not in running


@pytest.mark.parametrize(
    ("conclusion", "status"),
    [
        ("success", "success"),
        ("failure", "error"),
        ("timed_out", "error"),
        ("startup_failure", "error"),
        ("cancelled", "canceled"),
        ("skipped", "skipped"),
        ("action_required", "blocked"),
        ("neutral", "success"),  # GitHub counts a neutral result as passing
    ],
)
def test_run_conclusion_maps_to_pipeline_status(conclusion: str, status: str) -> None:
    """Each conclusion of a completed run gives its intake status, and errors say the cause."""
    mapped = map_github("workflow_run", run_with(conclusion=conclusion))
    [pipeline] = resources(mapped)
    assert status == pipeline["status"]
    assert mapped.keys[0].endswith(f":{status}")
    if status == "error":
        assert f"workflow run concluded {conclusion}" == pipeline["error"]["message"]


def test_later_attempt_is_a_partial_retry_of_the_previous_attempt() -> None:
    """Attempt 3 of a run (edited copy) has its own unique_id and points at attempt 2's."""
    mapped = map_github("workflow_run", run_with(run_attempt=3))
    [pipeline] = resources(mapped)
    assert run_unique_id(300029405, 289782451, 3) == pipeline["unique_id"]
    assert True is pipeline["partial_retry"]
    assert {"id": run_unique_id(300029405, 289782451, 2)} == pipeline["previous_attempt"]
    assert ("github:300029405:run:289782451:3:success",) == mapped.keys


def test_credentials_in_the_clone_url_are_not_forwarded() -> None:
    """A clone URL carrying a user and token (edited copy) is sent without them."""
    payload = recorded("workflow_run.completed")
    payload["repository"]["clone_url"] = "https://x-token:secret@github.com/octo-org/octo-repo.git"
    [pipeline] = resources(map_github("workflow_run", payload))
    assert "https://github.com/octo-org/octo-repo.git" == pipeline["git"]["repository_url"]


def test_completed_job_is_a_job_event_of_its_run() -> None:
    """A completed workflow_job makes a valid job event whose pipeline is its run's attempt,
    named by workflow_name; the run and job examples name different runs, so the run is an
    edited copy with the job's repository and run id."""
    job_payload = recorded("workflow_job.completed.success")
    job = job_payload["workflow_job"]
    run_payload = run_with(id=job["run_id"], name="CodeQL")
    run_payload["repository"]["id"] = job_payload["repository"]["id"]
    [pipeline] = resources(map_github("workflow_run", run_payload))
    mapped = map_github("workflow_job", job_payload)
    job_resource, *steps = resources(mapped)
    assert {
        "level": "job",
        "id": derived_id("github", 186853002, "job", 289782451, 1),
        "name": "linters",
        "url": "https://github.com/octo-org/octo-repo/runs/1291536064",
        "start": job["started_at"],
        "end": job["completed_at"],
        "status": "success",
        "node": {"name": "GitHub Actions 5", "labels": ["ubuntu-latest"]},
        "pipeline_name": "CodeQL",
        "pipeline_unique_id": pipeline["unique_id"],
    } == job_resource
    assert {pipeline["name"]} == {item["pipeline_name"] for item in steps}
    assert {pipeline["unique_id"]} == {item["pipeline_unique_id"] for item in steps}
    assert "github:186853002:job:289782451:1:success" == mapped.keys[0]


def test_every_completed_step_is_a_step_event_of_its_job() -> None:
    """Each completed step of a job is a valid step event naming its job, with a key of its own."""
    mapped = map_github("workflow_job", recorded("workflow_job.completed.success"))
    job, *steps = resources(mapped)
    assert [
        "Set up job",
        "Checkout Repo",
        "Install Ruby",
        "Run Rubocop",
        "Run Brakeman",
        "Run Bundle Audit",
        "Post Checkout Repo",
        "Complete job",
    ] == [step["name"] for step in steps]
    assert {(job["id"], "linters", "success")} == {
        (step["job_id"], step["job_name"], step["status"]) for step in steps
    }
    assert len(set(mapped.keys)) == len(mapped.keys)
    assert "github:186853002:step:289782451:1:13:success" == mapped.keys[-1]


def test_failed_step_is_an_error_and_skipped_steps_are_not_sent() -> None:
    """In the recorded failed job, the failing step is an error saying it failed, the two skipped
    steps make no event, and the job's error names the failed step."""
    payload = named_job()
    job, *steps = resources(map_github("workflow_job", payload))
    by_name = {step["name"]: step for step in steps}
    assert 12 - 2 == len(steps)
    assert "Post Run actions/cache@v2" not in by_name
    assert ("error", {"message": "step failed"}) == (
        by_name["Run yarn run format-check"]["status"],
        by_name["Run yarn run format-check"]["error"],
    )
    assert "success" == by_name["Complete job"]["status"]
    assert (
        "error",
        "job concluded failure; failed or cancelled steps: Run yarn run format-check",
    ) == (
        job["status"],
        job["error"]["message"],
    )


def test_cancelled_step_is_an_error_saying_it_was_cancelled() -> None:
    """A cancelled step (edited copy of a recorded step) is sent as an error saying so."""
    payload = named_job()
    payload["workflow_job"]["conclusion"] = "cancelled"
    payload["workflow_job"]["steps"][7]["conclusion"] = "cancelled"
    job, *steps = resources(map_github("workflow_job", payload))
    [cancelled] = [step for step in steps if step["name"] == "Run yarn run format-check"]
    assert ("canceled", "error", "step was cancelled") == (
        job["status"],
        cancelled["status"],
        cancelled["error"]["message"],
    )


def test_long_job_error_message_is_cut_to_the_intake_limit() -> None:
    """A job whose failed steps have very long names (edited copy) keeps its error message within
    the intake's 5000 characters, so the event stays valid."""
    payload = named_job()
    for step in payload["workflow_job"]["steps"]:
        step["name"] = "x" * 1000 + step["name"]
        step["conclusion"] = "failure"
    job, *_ = resources(map_github("workflow_job", payload))
    assert 5000 == len(job["error"]["message"])


def test_job_queue_time_is_milliseconds_from_creation_to_start() -> None:
    """A job's created_at (added to an edited copy: the examples predate it) gives queue_time in
    milliseconds until started_at."""
    payload = named_job("workflow_job.completed.success")
    started = _parse(payload["workflow_job"]["started_at"])
    created = started - timedelta(seconds=12, milliseconds=500)
    payload["workflow_job"]["created_at"] = created.isoformat().replace("+00:00", "Z")
    job, *_ = resources(map_github("workflow_job", payload))
    assert 12_500 == job["queue_time"]


def test_job_without_workflow_name_is_unusable() -> None:
    """The recorded failed job has no workflow_name: its pipeline cannot be named, so it is
    unusable with that reason (a dead letter) rather than sent under a guessed name."""
    mapped = map_github("workflow_job", recorded("workflow_job.completed.failure"))
    expected = unusable("GitHub workflow_job has no workflow_name to name its pipeline")
    assert expected == mapped


@pytest.mark.parametrize("action", ["queued", "in_progress", "waiting"])
def test_unfinished_job_is_ignored(action: str) -> None:
    """A job hook before completion (edited action) makes nothing."""
    payload = named_job("workflow_job.completed.success")
    payload["action"] = action
    mapped = map_github("workflow_job", payload)
    assert ((), f"GitHub workflow_job action {action!r} makes no job event") == (
        mapped.events,
        mapped.ignored,
    )


@pytest.mark.parametrize("action", ["requested", "deleted"])
def test_requested_run_is_ignored(action: str) -> None:
    """A workflow_run hook other than in_progress or completed (edited action) makes nothing."""
    payload = recorded("workflow_run.completed")
    payload["action"] = action
    assert f"GitHub workflow_run action {action!r} makes no pipeline event" == (
        map_github("workflow_run", payload).ignored
    )


def test_stale_run_is_ignored() -> None:
    """A run GitHub marked stale (edited conclusion) has no intake status and is ignored."""
    mapped = map_github("workflow_run", run_with(conclusion="stale"))
    assert "GitHub workflow_run conclusion 'stale' has no intake status" == mapped.ignored


@pytest.mark.parametrize("kind", ["ping", "push", "check_run"])
def test_other_kinds_are_ignored(kind: str) -> None:
    """A ping or any kind other than workflow_run and workflow_job makes nothing."""
    assert f"GitHub event {kind!r} makes no pipeline event" == map_github(kind, {}).ignored


@pytest.mark.parametrize("kind", ["workflow_run", "workflow_job"])
def test_payload_without_its_object_is_the_wrong_kind(kind: str) -> None:
    """A hook without the object its kind is about is not that kind (the edge answers 400)."""
    with pytest.raises(WrongKind, match=f"has a {kind} object; this payload has none"):
        map_github(kind, {"action": "completed"})


def test_run_without_repository_is_unusable_saying_what_is_missing() -> None:
    """A run of the kind that lacks a field its event needs is unusable, with the reason."""
    payload = recorded("workflow_run.completed")
    del payload["repository"]
    mapped = map_github("workflow_run", payload)
    assert "GitHub workflow_run: the payload has no repository object" == mapped.unusable


def test_the_recorded_payload_is_left_unchanged() -> None:
    """Mapping does not modify the payload it is given."""
    payload = named_job()
    before = copy.deepcopy(payload)
    map_github("workflow_job", payload)
    assert before == payload
