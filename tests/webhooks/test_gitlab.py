"""GitLab's Pipeline Hook and Job Hook, on recorded payloads (see payloads/gitlab/README.md)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from relay.contract.schema import validate_events
from relay.webhooks.gitlab import JOB_HOOK, PIPELINE_HOOK, map_gitlab
from relay.webhooks.mapped import Mapped, WrongKind
from tests.webhooks.recorded import gitlab, read_time, walk_times

_GITLAB_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")


def load(name: str) -> dict[str, Any]:
    """A recorded payload, its times shifted (same format) so the latest is a minute ago."""
    return gitlab(name)


def as_rfc3339(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with GitLab's "2025-04-01 18:31:49 UTC" times written as RFC3339."""
    result: dict[str, Any] = walk_times(payload, lambda value: read_time(value).isoformat())
    return result


def resources(mapped: Mapped) -> list[dict[str, Any]]:
    """The resources of ``mapped``, after checking that the intake's model accepts them all."""
    assert mapped.events, mapped.ignored
    validate_events(mapped.events)
    return [item["attributes"]["resource"] for item in mapped.events]


def by_level(mapped: Mapped, level: str) -> list[dict[str, Any]]:
    return [resource for resource in resources(mapped) if resource["level"] == level]


def job_named(mapped: Mapped, name: str) -> dict[str, Any]:
    return next(job for job in by_level(mapped, "job") if job["name"] == name)


def test_finished_pipeline_maps_to_pipeline_stage_and_job_events() -> None:
    """A successful Pipeline Hook makes its pipeline, its stages and a job per finished build."""
    payload = load("pipeline.json")
    mapped = map_gitlab("Pipeline Hook", payload)
    (pipeline,) = by_level(mapped, "pipeline")
    assert {
        "name": "gitlab-org/gitlab-test",
        "url": "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/pipelines/31",
        "status": "success",
        "partial_retry": False,
        "queue_time": 12_000,
    }.items() <= pipeline.items()
    assert read_time(pipeline["start"].replace("Z", "+00:00")) == read_time(
        payload["object_attributes"]["created_at"]
    )
    assert pipeline["git"] == {
        "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
        "branch": "master",
        "repository_url": "http://192.168.64.1:3005/gitlab-org/gitlab-test.git",
        "author_email": "user@gitlab.com",
        "author_name": "User",
        "message": "test\n",
        "default_branch": "master",
        "author_time": pipeline["git"]["author_time"],
    }
    assert sorted(s["name"] for s in by_level(mapped, "stage")) == ["build", "deploy", "test"]
    # build 379 is "created": not finished, no job.
    jobs = by_level(mapped, "job")
    assert sorted(j["name"] for j in jobs) == [
        "build-image",
        "production",
        "test-build",
        "test-image",
    ]
    assert {(j["pipeline_unique_id"], j["pipeline_name"]) for j in jobs} == {
        (pipeline["unique_id"], "gitlab-org/gitlab-test")
    }
    assert len(set(mapped.keys)) == len(mapped.keys)


@pytest.mark.parametrize(
    ("gitlab_status", "status"),
    [
        ("success", "success"),
        ("failed", "error"),
        ("canceled", "canceled"),
        ("skipped", "skipped"),
        ("manual", "blocked"),  # waiting for a manual job
    ],
)
def test_finished_pipeline_status_maps_to_intake_status(gitlab_status: str, status: str) -> None:
    """Each finished GitLab status gives its intake status, in the event and in its key."""
    payload = load("pipeline.json")  # edited copy: the recorded one is a success
    payload["object_attributes"]["status"] = gitlab_status
    mapped = map_gitlab("Pipeline Hook", payload)
    (pipeline,) = by_level(mapped, "pipeline")
    assert pipeline["status"] == status
    assert mapped.keys[0] == f"gitlab:192.168.64.1:3005/1:pipeline:31:{status}"


def test_running_pipeline_maps_to_one_running_pipeline_event() -> None:
    """A running Pipeline Hook makes only a running pipeline event, with no end."""
    payload = load("pipeline.json")  # edited copy: the recorded one is a success
    payload["object_attributes"]["status"] = "running"
    payload["object_attributes"]["finished_at"] = None
    finished = by_level(map_gitlab("Pipeline Hook", load("pipeline.json")), "pipeline")[0]
    mapped = map_gitlab("Pipeline Hook", payload)
    (running,) = resources(mapped)
    assert running["status"] == "running"
    assert "end" not in running
    assert running["unique_id"] == finished["unique_id"]
    assert mapped.keys == ("gitlab:192.168.64.1:3005/1:pipeline:31:running",)


@pytest.mark.parametrize("status", ["created", "pending", "waiting_for_resource", "preparing"])
def test_pipeline_not_started_or_finished_is_ignored(status: str) -> None:
    """A pipeline neither running nor finished makes nothing, with a reason."""
    payload = load("pipeline.json")
    payload["object_attributes"]["status"] = status
    mapped = map_gitlab("Pipeline Hook", payload)
    assert mapped.events == ()
    assert mapped.ignored is not None


def test_pipeline_own_name_names_every_level() -> None:
    """A pipeline with a name of its own is named by it on the pipeline, stages and jobs."""
    payload = load("pipeline.json")  # edited copy: the recorded one has no name
    payload["object_attributes"]["name"] = "Nightly"
    found = resources(map_gitlab("Pipeline Hook", payload))
    names = {r.get("pipeline_name", r["name"]) for r in found if r["level"] != "stage"}
    assert names == {"Nightly"}
    assert {r["pipeline_name"] for r in found if r["level"] == "stage"} == {"Nightly"}


def test_tag_pipeline_sends_tag_not_branch() -> None:
    """A tag pipeline's ref is sent as the git tag."""
    payload = load("pipeline.json")  # edited copy: the recorded one is a branch pipeline
    payload["object_attributes"]["tag"] = True
    (pipeline,) = by_level(map_gitlab("Pipeline Hook", payload), "pipeline")
    assert pipeline["git"]["tag"] == "master"
    assert "branch" not in pipeline["git"]


def test_repository_url_loses_credentials() -> None:
    """A clone URL carrying a token is sent without it."""
    payload = load("pipeline.json")  # edited copy: a token in the clone URL
    payload["project"]["git_http_url"] = "https://oauth2:s3cret@gitlab.example/g/p.git"
    (pipeline,) = by_level(map_gitlab("Pipeline Hook", payload), "pipeline")
    assert pipeline["git"]["repository_url"] == "https://gitlab.example/g/p.git"


def test_stage_spans_its_builds_and_takes_status_from_them() -> None:
    """A stage starts at its earliest build start, ends at its latest finish, fails with a build."""
    payload = load("pipeline.json")  # edited copy: test-image fails
    payload["builds"][1]["status"] = "failed"
    payload["builds"][1]["failure_reason"] = "script_failure"
    builds = {b["name"]: b for b in payload["builds"]}
    stages = {s["name"]: s for s in by_level(map_gitlab("Pipeline Hook", payload), "stage")}
    test = stages["test"]
    assert read_time(test["start"].replace("Z", "+00:00")) == read_time(
        builds["test-build"]["started_at"]
    )
    assert read_time(test["end"].replace("Z", "+00:00")) == read_time(
        builds["test-build"]["finished_at"]
    )
    assert test["status"] == "error"
    assert stages["build"]["status"] == "success"
    assert stages["deploy"]["status"] == "skipped"


def test_job_carries_queue_time_runner_and_failure_reason() -> None:
    """A failed build's job has its queue time in ms, its runner as node and its reason as error."""
    payload = load("pipeline.json")  # edited copy: production failed
    payload["builds"][0]["status"] = "failed"
    mapped = map_gitlab("Pipeline Hook", payload)
    job = job_named(mapped, "production")
    assert job["status"] == "error"
    assert job["queue_time"] == 3_500
    assert job["node"] == {
        "name": "shared-runners-manager-1.gitlab.com",
        "labels": ["docker", "gce"],
    }
    assert job["error"] == {"type": "script_failure", "message": "script_failure", "domain": "user"}
    assert job["stage_name"] == "deploy"
    assert job["url"] == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/jobs/380"
    assert "error" not in job_named(mapped, "test-build")


def test_retried_build_is_its_own_job() -> None:
    """A retried build and its retry are two jobs with two ids."""
    payload = load("pipeline.json")  # edited copy: test-build ran twice, first one failed
    retry = copy.deepcopy(payload["builds"][2])
    payload["builds"][2] |= {"id": 375, "status": "failed", "retried": True}
    payload["builds"].append(retry)
    jobs = by_level(map_gitlab("Pipeline Hook", payload), "job")
    tries = [j for j in jobs if j["name"] == "test-build"]
    assert sorted(j["status"] for j in tries) == ["error", "success"]
    assert len({j["id"] for j in tries}) == 2


def test_job_hook_maps_finished_job() -> None:
    """A finished Job Hook makes its job at once, named by its pipeline."""
    mapped = map_gitlab("Job Hook", load("job.json"))
    (job,) = resources(mapped)
    assert {
        "name": "auto_deploy:start",
        "status": "success",
        "url": "https://gitlab.com/jsmithy2/release-tools-fake/-/jobs/3580121225",
        "queue_time": 193,
        "stage_name": "coordinated:tag",
        "pipeline_name": "Build pipeline",  # commit.name is the pipeline's name
    }.items() <= job.items()
    assert job["node"]["name"] == "4-blue.shared.runners-manager.gitlab.com/default"
    assert job["git"]["author_email"] == "john@smith.com"
    assert mapped.keys == ("gitlab:gitlab.com/31537070:job:3580121225:success",)


@pytest.mark.parametrize("status", ["running", "pending", "created"])
def test_job_hook_not_finished_is_ignored(status: str) -> None:
    """A Job Hook for a job not finished makes nothing, with a reason."""
    payload = load("job.json")
    payload["build_status"] = status
    mapped = map_gitlab("Job Hook", payload)
    assert mapped.events == ()
    assert mapped.ignored is not None


def job_hook_for_build_378() -> dict[str, Any]:
    """job.json edited to announce build 378 of pipeline.json (the recorded ones differ)."""
    pipeline = load("pipeline.json")
    build = pipeline["builds"][2]
    payload = load("job.json")
    payload |= {
        "build_id": build["id"],
        "build_name": build["name"],
        "build_stage": build["stage"],
        "build_status": build["status"],
        "build_created_at": build["created_at"],
        "build_started_at": build["started_at"],
        "build_finished_at": build["finished_at"],
        "pipeline_id": pipeline["object_attributes"]["id"],
        "project_id": pipeline["project"]["id"],
        "sha": pipeline["object_attributes"]["sha"],
        "ref": pipeline["object_attributes"]["ref"],
    }
    payload["commit"] |= {"id": pipeline["object_attributes"]["id"], "name": None}
    payload["repository"] |= {
        "homepage": pipeline["project"]["web_url"],
        "git_http_url": pipeline["project"]["git_http_url"],
    }
    return payload


def test_job_hook_and_pipeline_hook_agree_on_ids_keys_and_names() -> None:
    """A build from a Job Hook has the id, key, pipeline id and name it has in the Pipeline Hook."""
    from_pipeline = map_gitlab("Pipeline Hook", load("pipeline.json"))
    from_job = map_gitlab("Job Hook", job_hook_for_build_378())
    (job,) = resources(from_job)
    same = job_named(from_pipeline, "test-build")
    for field in ("id", "pipeline_unique_id", "pipeline_name", "stage_id", "url"):
        assert job[field] == same[field]
    assert from_job.keys[0] in from_pipeline.keys
    assert job["pipeline_unique_id"] == by_level(from_pipeline, "pipeline")[0]["unique_id"]


def test_job_hook_prefers_project_path_when_sent() -> None:
    """A Job Hook with the project's attributes names the pipeline by path_with_namespace."""
    payload = job_hook_for_build_378()  # edited further: a recent GitLab's project object
    payload["project"] = {"id": 1, "path_with_namespace": "gitlab-org/gitlab-test"}
    payload["repository"]["homepage"] = "http://192.168.64.1:3005/gitlab/gitlab-org/gitlab-test"
    (job,) = resources(map_gitlab("Job Hook", payload))
    assert job["pipeline_name"] == "gitlab-org/gitlab-test"


@pytest.mark.parametrize(
    ("kind", "name"), [("Pipeline Hook", "pipeline.json"), ("Job Hook", "job.json")]
)
def test_gitlab_and_rfc3339_times_map_alike(kind: str, name: str) -> None:
    """The same payload with "... UTC" times and with RFC3339 times makes the same events."""
    payload = load(name)
    mapped = map_gitlab(kind, as_rfc3339(payload))
    assert mapped == map_gitlab(kind, payload)
    resources(mapped)  # events made, each accepted by the intake's model


@pytest.mark.parametrize("kind", ["Push Hook", "Merge Request Hook", "Deployment Hook", ""])
def test_other_kinds_are_ignored(kind: str) -> None:
    """A hook that is not a pipeline or job hook makes nothing, with a reason."""
    mapped = map_gitlab(kind, load("pipeline.json"))
    assert mapped.events == ()
    assert mapped.ignored is not None


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (PIPELINE_HOOK, {"object_kind": "pipeline"}),
        (PIPELINE_HOOK, {"object_kind": "build", "object_attributes": {}}),
        (JOB_HOOK, {"object_kind": "build"}),
        (JOB_HOOK, {"object_kind": "pipeline", "build_status": "success"}),
    ],
)
def test_payload_that_is_not_its_kind_is_the_wrong_kind(kind: str, payload: dict[str, Any]) -> None:
    """A hook whose body is not what its X-Gitlab-Event says is refused (the edge answers 400)."""
    with pytest.raises(WrongKind, match=f"a GitLab {kind} has object_kind"):
        map_gitlab(kind, payload)


def test_pipeline_without_project_url_is_unusable() -> None:
    """A Pipeline Hook that lacks what its ids derive from is unusable (a dead letter)."""
    payload = load("pipeline.json")
    del payload["project"]["web_url"]
    mapped = map_gitlab(PIPELINE_HOOK, payload)
    assert ((), None) == (mapped.events, mapped.ignored)
    assert "GitLab pipeline hook without project web URL" in (mapped.unusable or "")


def test_job_without_times_is_unusable() -> None:
    """A finished Job Hook with no start time at all cannot become a job event."""
    payload = load("job.json")
    for field in ("build_started_at", "build_created_at", "build_finished_at"):
        payload[field] = None
    mapped = map_gitlab(JOB_HOOK, payload)
    assert "GitLab job hook without" in (mapped.unusable or "")
