"""Every event the webhook mappers make is one Datadog's intake takes (the webhook contract).

The GitLab and GitHub mappers (``relay.webhooks``) build intake events themselves, from
payloads that GitLab and GitHub write, not a runner using the relay's contract: what they
build must still be a request the intake accepts, or the relay would keep and forward
events that can only be refused. Each event of a broad set of deliveries (the recorded payloads of
``tests.webhooks.recorded``, their times shifted to just before now, and edited copies for the
cases no recording has) is judged alone (``{"data": item}``) and with the rest of its
delivery (``{"data": [...]}``) by Datadog's own Python client models
(``tests.contract.datadog_models``, offline) and by the relay's own validation
(``relay.contract.schema``), as ``test_contract.py`` judges ingest bodies. A hypothesis test
draws GitLab build lists into a Pipeline Hook for the shapes the recordings lack.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.contract.intake import MAX_ERROR_MESSAGE
from relay.contract.schema import INT64_MAX, InvalidRequest, parse_request, validate_events
from relay.webhooks.github import JOB_STATUS as GITHUB_JOB_STATUS
from relay.webhooks.github import PIPELINE_STATUS as GITHUB_RUN_STATUS
from relay.webhooks.github import map_github, run_unique_id
from relay.webhooks.gitlab import JOB_HOOK, PIPELINE_HOOK, map_gitlab
from relay.webhooks.mapped import Mapped
from tests.contract.datadog_models import client_accepts
from tests.webhooks.recorded import github, gitlab, read_time, walk_times

# The recorded workflow_run's repository and run (the GitHub ids derive from them).
RUN_REPOSITORY_ID = 300029405
RUN_ID = 289782451
# GitLab's build statuses the hypothesis test draws; created and running are not finished.
BUILD_STATUSES = ["success", "failed", "canceled", "skipped", "manual", "created", "running"]
FINISHED_BUILD_STATUSES = {"success", "failed", "canceled", "skipped", "manual"}
# An edit of a payload or of one of its objects, in place.
Edit = Callable[[dict[str, Any]], None]
# The drawn builds are copies of pipeline.json's test-build, every time of it replaced.
BUILD_TEMPLATE = gitlab("pipeline.json")["builds"][2]
# Short text in any script (no lone surrogates, which are not UTF-8).
TEXT = st.text(st.characters(codec="utf-8"), max_size=16)


def each_accepted(mapped: Mapped) -> list[dict[str, Any]]:
    """The resources of ``mapped``, after failing unless it made events, the client models and
    the relay's validation take each alone, and the relay's validation takes them together."""
    assert (None, None) == (mapped.ignored, mapped.unusable)
    items = list(mapped.events)
    assert items
    assert [] == [item for item in items if not client_accepts({"data": item})]
    for item in items:
        parse_request(orjson.dumps({"data": item}))  # raises InvalidRequest, naming the field
    validate_events(items)
    return [item["attributes"]["resource"] for item in items]


def accepted(mapped: Mapped) -> list[dict[str, Any]]:
    """``each_accepted``, and the client models take all of the events together too."""
    resources = each_accepted(mapped)
    assert client_accepts({"data": list(mapped.events)})
    return resources


def levels(resources: list[dict[str, Any]]) -> Counter[str]:
    """How many resources of each level."""
    return Counter(resource["level"] for resource in resources)


def as_rfc3339(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with GitLab's "2025-04-01 18:31:49 UTC" times written as RFC3339."""
    result: dict[str, Any] = walk_times(payload, lambda value: read_time(value).isoformat())
    return result


def gitlab_time(moment: datetime) -> str:
    """``moment`` as GitLab's hooks write it: ``2025-04-01 18:31:49 UTC``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def in_format(payload: dict[str, Any], time_format: str) -> dict[str, Any]:
    """``payload`` with its GitLab times as they are (``gitlab``) or as RFC3339 (``rfc3339``)."""
    return as_rfc3339(payload) if time_format == "rfc3339" else payload


# Builds of pipeline.json (0 production, 1 test-image, 2 test-build, 3 build-image,
# 4 staging) edited to go with the pipeline's status, so that the cases also make jobs and
# stages of statuses the recording lacks.
_NOT_RUN = {"started_at": None, "finished_at": None}
PIPELINE_BUILD_EDITS: dict[str, dict[int, dict[str, Any]]] = {
    "success": {},
    "failed": {1: {"status": "failed", "failure_reason": "script_failure"}},
    "canceled": {2: {"status": "canceled"}, 4: {"status": "canceled"} | _NOT_RUN},
    "skipped": {index: {"status": "skipped"} | _NOT_RUN for index in range(5)},
    "manual": {0: {"status": "manual"}, 4: {"status": "manual"} | _NOT_RUN},
    "running": {1: {"status": "running", "finished_at": None}},
}
GITLAB_PIPELINE_STATUS = {
    "success": "success",
    "failed": "error",
    "canceled": "canceled",
    "skipped": "skipped",
    "manual": "blocked",
    "running": "running",
}
FINISHED_PIPELINE_STATUSES = [status for status in GITLAB_PIPELINE_STATUS if status != "running"]


@pytest.mark.parametrize("time_format", ["gitlab", "rfc3339"])
@pytest.mark.parametrize("status", list(GITLAB_PIPELINE_STATUS))
def test_gitlab_pipeline_hook_events_are_accepted(status: str, time_format: str) -> None:
    """A Pipeline Hook of each finished status and running, in either time format, makes
    events the client models and the relay accept."""
    payload = gitlab("pipeline.json")  # edited copy: the recorded one is a success
    payload["object_attributes"]["status"] = status
    if status == "running":
        payload["object_attributes"]["finished_at"] = None
    for index, fields in PIPELINE_BUILD_EDITS[status].items():
        payload["builds"][index] |= fields
    resources = accepted(map_gitlab(PIPELINE_HOOK, in_format(payload, time_format)))
    expected_levels = {"pipeline"} if status == "running" else {"pipeline", "stage", "job"}
    assert expected_levels == set(levels(resources))
    assert GITLAB_PIPELINE_STATUS[status] == resources[0]["status"]


def _named(payload: dict[str, Any]) -> None:
    payload["object_attributes"]["name"] = "Nightly"


def _tag(payload: dict[str, Any]) -> None:
    payload["object_attributes"]["tag"] = True


def _no_upstream(payload: dict[str, Any]) -> None:
    del payload["source_pipeline"]


def _no_author_email(payload: dict[str, Any]) -> None:
    payload["commit"]["author"]["email"] = None  # no git object: the intake requires the email


def _no_finished_at(payload: dict[str, Any]) -> None:
    payload["object_attributes"]["finished_at"] = None  # the end is the latest build's


def _retried_build(payload: dict[str, Any]) -> None:
    retry = copy.deepcopy(payload["builds"][2])
    payload["builds"][2] |= {"id": 375, "status": "failed", "retried": True}
    payload["builds"].append(retry)


def _allowed_failure(payload: dict[str, Any]) -> None:
    payload["builds"][1] |= {
        "status": "failed",
        "allow_failure": True,
        "failure_reason": "runner_system_failure",
    }


def _no_runner_no_queue(payload: dict[str, Any]) -> None:
    payload["object_attributes"]["queued_duration"] = None
    for build in payload["builds"]:
        build |= {"runner": None, "queued_duration": None}


def _credentials_in_clone_url(payload: dict[str, Any]) -> None:
    payload["project"]["git_http_url"] = "https://oauth2:s3cret@gitlab.example/g/p.git"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_named, id="own-name"),
        pytest.param(_tag, id="tag"),
        pytest.param(_no_upstream, id="no-source-pipeline"),
        pytest.param(_no_author_email, id="no-author-email"),
        pytest.param(_no_finished_at, id="no-finished_at"),
        pytest.param(_retried_build, id="retried-build"),
        pytest.param(_allowed_failure, id="allowed-failure"),
        pytest.param(_no_runner_no_queue, id="no-runner-no-queued_duration"),
        pytest.param(_credentials_in_clone_url, id="credentials-in-clone-url"),
    ],
)
def test_gitlab_pipeline_hook_variants_are_accepted(edit: Edit) -> None:
    """A finished Pipeline Hook edited in one way the recording lacks makes accepted events."""
    payload = gitlab("pipeline.json")
    edit(payload)
    resources = accepted(map_gitlab(PIPELINE_HOOK, payload))
    assert "pipeline" == resources[0]["level"]


@pytest.mark.parametrize("time_format", ["gitlab", "rfc3339"])
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, {"status": "success"}, id="success"),
        pytest.param(
            {"build_status": "failed", "build_failure_reason": "script_failure"},
            {"status": "error", "error": {"type": "script_failure", "message": "script_failure"}},
            id="failed-script_failure",
        ),
        pytest.param(
            {"build_status": "failed", "build_failure_reason": "runner_system_failure"},
            {"status": "error", "error": {"domain": "provider"}},
            id="failed-runner_system_failure",
        ),
        pytest.param(
            {"build_status": "failed", "build_failure_reason": None},
            {"status": "error", "error": {"type": "unknown_failure"}},
            id="failed-without-reason",
        ),
        pytest.param({"build_status": "canceled"}, {"status": "canceled"}, id="canceled"),
        pytest.param(
            {"build_status": "skipped", "build_started_at": None, "build_finished_at": None},
            {"status": "skipped"},
            id="skipped-never-started",
        ),
        pytest.param({"build_status": "manual"}, {"status": "skipped"}, id="manual"),
    ],
)
def test_gitlab_job_hook_events_are_accepted(
    fields: dict[str, Any], expected: dict[str, Any], time_format: str
) -> None:
    """A Job Hook of each finished status, in either time format, makes an accepted job."""
    payload = gitlab("job.json") | fields  # edited copy: the recorded one is a success
    (job,) = accepted(map_gitlab(JOB_HOOK, in_format(payload, time_format)))
    assert expected["status"] == job["status"]
    assert expected.get("error", {}).items() <= job.get("error", {}).items()


def test_gitlab_job_hook_of_a_recent_gitlab_is_accepted() -> None:
    """A Job Hook carrying the project's attributes (edited copy: a recent GitLab's) is accepted."""
    payload = gitlab("job.json")
    payload["project"] = {
        "id": payload["project_id"],
        "web_url": payload["repository"]["homepage"],
        "path_with_namespace": "jsmithy2/release-tools-fake",
        "git_http_url": payload["repository"]["git_http_url"],
        "default_branch": "main",
    }
    (job,) = accepted(map_gitlab(JOB_HOOK, payload))
    assert "main" == job["git"]["default_branch"]


def run_with(action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The recorded completed run with its action and ``fields`` of its workflow_run replaced."""
    payload = github("workflow_run.completed")
    payload["action"] = action
    payload["workflow_run"] |= fields
    return payload


_IN_PROGRESS = {"status": "in_progress", "conclusion": None}
_SECOND_ATTEMPT = {
    "partial_retry": True,
    "previous_attempt": {"id": run_unique_id(RUN_REPOSITORY_ID, RUN_ID, 1)},
}


@pytest.mark.parametrize(
    ("action", "fields", "expected"),
    [
        pytest.param("in_progress", _IN_PROGRESS, {"status": "running"}, id="in_progress"),
        *(
            pytest.param("completed", {"conclusion": conclusion}, {"status": status}, id=conclusion)
            for conclusion, status in GITHUB_RUN_STATUS.items()
        ),
        pytest.param(
            "completed",
            {"run_attempt": 2},
            _SECOND_ATTEMPT | {"status": "success"},
            id="run_attempt-2",
        ),
        pytest.param(
            "in_progress",
            _IN_PROGRESS | {"run_attempt": 2},
            _SECOND_ATTEMPT | {"status": "running"},
            id="in_progress-run_attempt-2",
        ),
        pytest.param(
            "completed",
            {"run_attempt": 2, "conclusion": "failure"},
            _SECOND_ATTEMPT | {"status": "error"},
            id="failure-run_attempt-2",
        ),
        pytest.param(
            "completed",
            {"event": "workflow_dispatch"},
            {"is_manual": True},
            id="workflow_dispatch",
        ),
        pytest.param(
            "completed",
            {"head_commit": None, "name": "Nightly"},
            {"name": "Nightly"},
            id="own-name-without-head_commit",
        ),
    ],
)
def test_github_workflow_run_events_are_accepted(
    action: str, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    """A workflow_run in progress, completed with each conclusion that maps, or a later
    attempt (a partial retry of the one before) makes an accepted pipeline event."""
    (pipeline,) = accepted(map_github("workflow_run", run_with(action, fields)))
    assert expected.items() <= pipeline.items()


def named_job(name: str) -> dict[str, Any]:
    """A recorded job payload, given a workflow_name where it has none (the failure's)."""
    payload = github(name)
    payload["workflow_job"].setdefault("workflow_name", "test")
    return payload


def _cancel_failed_step(job: dict[str, Any]) -> None:
    job["conclusion"] = "cancelled"
    job["steps"][7]["conclusion"] = "cancelled"


def _long_step_names(job: dict[str, Any]) -> None:
    for step in job["steps"]:
        step["name"] = "x" * 1000 + step["name"]
        step["conclusion"] = "failure"


def _queued(job: dict[str, Any]) -> None:
    started = datetime.fromisoformat(job["started_at"])
    job["created_at"] = (started - timedelta(seconds=12.5)).isoformat().replace("+00:00", "Z")


def _second_attempt(job: dict[str, Any]) -> None:
    job["run_attempt"] = 2


def _no_node(job: dict[str, Any]) -> None:
    job["runner_name"] = None
    job["labels"] = []


def _unchanged(job: dict[str, Any]) -> None:
    """The recorded job as it is."""


GITHUB_JOB_CASES = [
    pytest.param("success", _unchanged, "success", [], id="success"),
    pytest.param("failure", _unchanged, "error", ["step failed"], id="failure"),
    pytest.param(
        "failure", _cancel_failed_step, "canceled", ["step was cancelled"], id="cancelled-step"
    ),
    pytest.param("failure", _long_step_names, "error", ["step failed"] * 12, id="long-step-names"),
    pytest.param("success", _queued, "success", [], id="queued-success"),
    pytest.param("failure", _second_attempt, "error", ["step failed"], id="run_attempt-2"),
    pytest.param("success", _no_node, "success", [], id="no-runner-no-labels"),
]


@pytest.mark.parametrize(("recording", "edit", "status", "step_errors"), GITHUB_JOB_CASES)
def test_github_workflow_job_events_are_accepted(
    recording: str, edit: Edit, status: str, step_errors: list[str]
) -> None:
    """A completed workflow_job makes an accepted job event and a step event per sendable step,
    failed and cancelled steps as errors saying so."""
    payload = named_job(f"workflow_job.completed.{recording}")
    edit(payload["workflow_job"])
    job, *steps = accepted(map_github("workflow_job", payload))
    assert ("job", status) == (job["level"], job["status"])
    assert {"step"} == {step["level"] for step in steps}
    errors = [step["error"]["message"] for step in steps if step["status"] == "error"]
    assert step_errors == errors


@pytest.mark.parametrize("conclusion", list(GITHUB_JOB_STATUS))
def test_github_workflow_job_of_each_conclusion_is_accepted(conclusion: str) -> None:
    """The recorded failed job (named) completed with each conclusion that maps is accepted."""
    payload = named_job("workflow_job.completed.failure")
    payload["workflow_job"]["conclusion"] = conclusion
    job, *_ = accepted(map_github("workflow_job", payload))
    assert GITHUB_JOB_STATUS[conclusion] == job["status"]


def test_a_mapped_event_broken_in_one_field_is_refused_by_both() -> None:
    """The check is not vacuous: a mapped job whose status is not the intake's is refused by
    the client models and by the relay."""
    (item,) = map_gitlab(JOB_HOOK, gitlab("job.json")).events
    broken = copy.deepcopy(item)
    broken["attributes"]["resource"]["status"] = "passed"
    assert (False, False) == (
        client_accepts({"data": broken}),
        client_accepts({"data": [item, broken]}),
    )
    with pytest.raises(InvalidRequest, match=r"data\[1\]\.attributes\.resource\.status"):
        validate_events([item, broken])


# Sender values past the intake's limits: the mapper cuts an error message to
# MAX_ERROR_MESSAGE and drops a queue_time that a 64-bit integer cannot hold.
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            {"build_status": "failed", "build_failure_reason": "x" * (MAX_ERROR_MESSAGE + 1)},
            id="failure_reason-over-5000-characters",
        ),
        pytest.param(
            {"build_queued_duration": (INT64_MAX + 1) / 1000},
            id="build_queued_duration-over-int64-milliseconds",
        ),
    ],
)
def test_gitlab_job_hook_values_past_the_intake_limits_make_accepted_events(
    fields: dict[str, Any],
) -> None:
    """A Job Hook whose failure_reason or queued_duration is past the intake's limits (edited
    copy) still makes a job event both judges accept (the mapper cuts or drops the value)."""
    accepted(map_gitlab(JOB_HOOK, gitlab("job.json") | fields))


@st.composite
def gitlab_builds(draw: st.DrawFn, created: datetime) -> list[dict[str, Any]]:
    """Builds of a Pipeline Hook created at ``created``: names, stages, statuses, allow_failure,
    queued_duration, runner and times drawn; ids 1000 and on."""
    builds = []
    for index in range(draw(st.integers(0, 6))):
        build_created = created + timedelta(seconds=draw(st.integers(0, 600)))
        # Not started (never ran), or started after a wait; not finished, or after a run
        # (a finish a little before the start, as a skewed clock writes it, included).
        waited = draw(st.none() | st.integers(0, 1800))
        started = None if waited is None else build_created + timedelta(seconds=waited)
        ran = draw(st.none() | st.integers(-60, 7200))
        finished = None if ran is None else (started or build_created) + timedelta(seconds=ran)
        runner = draw(
            st.none()
            | st.fixed_dictionaries(
                {"id": st.integers(1, 10**6)},
                optional={
                    "description": st.none() | TEXT,
                    "tags": st.none() | st.lists(TEXT, max_size=3),
                },
            )
        )
        build = copy.deepcopy(BUILD_TEMPLATE) | {
            "id": 1000 + index,
            "name": draw(TEXT),
            "stage": draw(st.sampled_from(["build", "test", "deploy", ""]) | TEXT),
            "status": draw(st.sampled_from(BUILD_STATUSES)),
            "allow_failure": draw(st.booleans()),
            "failure_reason": draw(st.none() | st.sampled_from(["script_failure", "api_failure"])),
            # Numbers a GitLab sends (seconds); past the int64 limit is its own test above.
            "queued_duration": draw(
                st.none() | st.integers(0, 10**7) | st.floats(-10, 1e7, allow_nan=False)
            ),
            "runner": runner,
            "created_at": gitlab_time(build_created),
            "started_at": None if started is None else gitlab_time(started),
            "finished_at": None if finished is None else gitlab_time(finished),
        }
        builds.append(build)
    return builds


@st.composite
def pipeline_hooks(draw: st.DrawFn) -> dict[str, Any]:
    """pipeline.json (ended three hours ago) with a drawn finished status, finished_at kept or
    null, drawn builds, and its times in either format."""
    payload = gitlab("pipeline.json", ago=timedelta(hours=3))
    attributes = payload["object_attributes"]
    attributes["status"] = draw(st.sampled_from(FINISHED_PIPELINE_STATUSES))
    if draw(st.booleans()):
        attributes["finished_at"] = None
    payload["builds"] = draw(gitlab_builds(read_time(attributes["created_at"])))
    return in_format(payload, draw(st.sampled_from(["gitlab", "rfc3339"])))


# Running pipelines make no stage or job events, so only finished ones are drawn (the
# parametrised test above covers running).
@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(pipeline_hooks())
def test_drawn_gitlab_pipeline_hooks_make_accepted_events(payload: dict[str, Any]) -> None:
    """A Pipeline Hook of drawn builds makes a job per finished build, every event accepted."""
    # Each event alone by both judges, all together by the relay's: the client models' verdict
    # on a whole delivery is the parametrised tests' (it doubles this test's run time).
    resources = each_accepted(map_gitlab(PIPELINE_HOOK, payload))
    finished = [b for b in payload["builds"] if b["status"] in FINISHED_BUILD_STATUSES]
    assert len(finished) == levels(resources)["job"]
    assert 1 == levels(resources)["pipeline"]
