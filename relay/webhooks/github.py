"""GitHub Actions webhooks (``workflow_run``, ``workflow_job``) as pipeline, job and step events.

Identities are derived from the repository id, the run or job id and the run attempt, so the
``in_progress`` and ``completed`` hooks of one run attempt give the same ``unique_id`` and a
job names the same pipeline as its run. Statuses from a ``conclusion``:

- pipeline: success→success, failure/timed_out/startup_failure→error, cancelled→canceled,
  skipped→skipped, action_required→blocked, neutral→success (GitHub counts a neutral result as
  passing); ``stale`` (GitHub gave up on the run) and unknown conclusions are ignored, as no
  intake status says "abandoned".
- job: as the pipeline, but a job cannot be ``blocked``: action_required is ignored.
- step: success→success, failure/cancelled→error (the error says which); skipped steps and
  steps without a conclusion are not sent (the intake allows a step only success or error).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.contract.exceptions import RelayError
from relay.contract.intake import MAX_ERROR_MESSAGE
from relay.contract.urls import strip_credentials
from relay.webhooks.mapped import (
    Mapped,
    WrongKind,
    cut,
    derived_id,
    event,
    ignored,
    unusable,
)

PIPELINE_STATUS = {
    "success": "success",
    "neutral": "success",
    "failure": "error",
    "timed_out": "error",
    "startup_failure": "error",
    "cancelled": "canceled",
    "skipped": "skipped",
    "action_required": "blocked",
}
JOB_STATUS = {key: value for key, value in PIPELINE_STATUS.items() if value != "blocked"}
# GitHub's step conclusion -> (intake status, error message or None); absent ones are not sent.
STEP_STATUS: dict[str, tuple[str, str | None]] = {
    "success": ("success", None),
    "failure": ("error", "step failed"),
    "cancelled": ("error", "step was cancelled"),
}


class _Unusable(RelayError):
    """The payload lacks what an event needs; the delivery is kept as a dead letter."""


def map_github(kind: str, payload: Mapping[str, Any]) -> Mapped:
    """The events of one GitHub delivery whose ``X-GitHub-Event`` header is ``kind``."""
    try:
        if kind == "workflow_run":
            return _workflow_run(payload)
        if kind == "workflow_job":
            return _workflow_job(payload)
    except _Unusable as exc:
        return unusable(f"GitHub {kind}: {exc}")
    return ignored(f"GitHub event {kind!r} makes no pipeline event")


def run_unique_id(repository_id: object, run_id: object, attempt: object) -> str:
    """The pipeline unique_id of one attempt of a workflow run."""
    return derived_id("github", repository_id, "run", run_id, attempt)


def _workflow_run(payload: Mapping[str, Any]) -> Mapped:
    action = payload.get("action")
    if action not in ("completed", "in_progress"):
        return ignored(f"GitHub workflow_run action {action!r} makes no pipeline event")
    run = _kind_object(payload, "workflow_run")
    repository_id = _field(_object(payload, "repository"), "id")
    run_id, attempt = _field(run, "id"), _attempt(run)
    resource: dict[str, Any] = {
        "level": "pipeline",
        "unique_id": run_unique_id(repository_id, run_id, attempt),
        "pipeline_id": str(run_id),
        "name": _pipeline_name(payload),
        "url": _field(run, "html_url"),
        "start": _field(run, "run_started_at"),
        "is_manual": run.get("event") == "workflow_dispatch",
    } | _retry(repository_id, run_id, attempt)
    if action == "in_progress":
        resource["status"] = "running"
    else:
        conclusion = run.get("conclusion")
        if conclusion not in PIPELINE_STATUS:
            return ignored(f"GitHub workflow_run conclusion {conclusion!r} has no intake status")
        resource |= {"status": PIPELINE_STATUS[conclusion], "end": _field(run, "updated_at")}
        if resource["status"] == "error":
            resource["error"] = {"message": f"workflow run concluded {conclusion}"}
    git = _git(payload, run)
    if git is not None:
        resource["git"] = git
    key = f"github:{repository_id}:run:{run_id}:{attempt}:{resource['status']}"
    return Mapped(events=(event(resource),), keys=(key,))


def _pipeline_name(payload: Mapping[str, Any]) -> str:
    """The run's name, or its workflow's: recorded payloads carry an empty ``workflow_run.name``,
    and ``workflow_job.workflow_name`` is the workflow's name, so both levels agree."""
    name = _object(payload, "workflow_run").get("name")
    if isinstance(name, str) and name:
        return name
    workflow = payload.get("workflow")
    name = workflow.get("name") if isinstance(workflow, Mapping) else None
    if isinstance(name, str) and name:
        return name
    raise _Unusable("the run has no name (workflow_run.name and workflow.name are empty)")


def _retry(repository_id: object, run_id: object, attempt: int) -> dict[str, Any]:
    """A later attempt re-runs part of the run (or all of it): it points at the attempt before."""
    if attempt <= 1:
        return {"partial_retry": False}
    previous = {"id": run_unique_id(repository_id, run_id, attempt - 1)}
    return {"partial_retry": True, "previous_attempt": previous}


def _git(payload: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The commit the run built; None without a head commit author (the intake requires one)."""
    commit = run.get("head_commit")
    author = commit.get("author") if isinstance(commit, Mapping) else None
    if not isinstance(commit, Mapping) or not isinstance(author, Mapping):
        return None
    if not author.get("email"):
        return None
    repository = _object(payload, "repository")
    git: dict[str, Any] = {
        "repository_url": strip_credentials(_field(repository, "clone_url")),
        "sha": _field(run, "head_sha"),
        "author_email": author["email"],
        "author_name": author.get("name"),
        "author_time": commit.get("timestamp"),
        "message": commit.get("message"),
        "branch": run.get("head_branch"),
        "default_branch": repository.get("default_branch"),
    }
    committer = commit.get("committer")
    if isinstance(committer, Mapping):
        git |= {"committer_name": committer.get("name"), "committer_email": committer.get("email")}
    # The intake's optional fields are strings: absent rather than null.
    return {name: value for name, value in git.items() if value is not None}


def _workflow_job(payload: Mapping[str, Any]) -> Mapped:
    action = payload.get("action")
    if action != "completed":
        return ignored(f"GitHub workflow_job action {action!r} makes no job event")
    job = _kind_object(payload, "workflow_job")
    conclusion = job.get("conclusion")
    if conclusion not in JOB_STATUS:
        return ignored(f"GitHub workflow_job conclusion {conclusion!r} has no intake status")
    pipeline_name = job.get("workflow_name")
    if not isinstance(pipeline_name, str) or not pipeline_name:
        # Older GitHub versions (and GHES) omit it; the run's name cannot be guessed here.
        return unusable("GitHub workflow_job has no workflow_name to name its pipeline")
    repository_id = _field(_object(payload, "repository"), "id")
    job_id, attempt = _field(job, "id"), _attempt(job)
    parent = {
        "pipeline_name": pipeline_name,
        "pipeline_unique_id": run_unique_id(repository_id, _field(job, "run_id"), attempt),
    }
    resource = _job_resource(job, JOB_STATUS[conclusion], conclusion) | parent
    resource["id"] = derived_id("github", repository_id, "job", job_id, attempt)
    events = [event(resource)]
    keys = [f"github:{repository_id}:job:{job_id}:{attempt}:{resource['status']}"]
    for step in _steps(job):
        status, message = STEP_STATUS[step["conclusion"]]
        number = _field(step, "number")
        step_resource = _step_resource(step, status, message) | parent
        step_resource |= {
            "id": derived_id("github", repository_id, "job", job_id, attempt, "step", number),
            "job_id": resource["id"],
            "job_name": resource["name"],
            "url": resource["url"],
        }
        events.append(event(step_resource))
        keys.append(f"github:{repository_id}:step:{job_id}:{attempt}:{number}:{status}")
    return Mapped(events=tuple(events), keys=tuple(keys))


def _job_resource(job: Mapping[str, Any], status: str, conclusion: str) -> dict[str, Any]:
    """The job's own fields (no git: a job payload has no commit author, which git requires)."""
    resource: dict[str, Any] = {
        "level": "job",
        "name": _field(job, "name"),
        "url": _field(job, "html_url"),
        "start": _field(job, "started_at"),
        "end": _field(job, "completed_at"),
        "status": status,
    }
    queue_time_ms = _queue_time_ms(job.get("created_at"), resource["start"])
    if queue_time_ms is not None:
        resource["queue_time"] = queue_time_ms
    node = _node(job)
    if node:
        resource["node"] = node
    if status == "error":
        failed = [step["name"] for step in _steps(job) if step["conclusion"] != "success"]
        detail = f"; failed or cancelled steps: {', '.join(failed)}" if failed else ""
        # The intake refuses an error message over MAX_ERROR_MESSAGE characters.
        message = cut(f"job concluded {conclusion}{detail}", MAX_ERROR_MESSAGE)
        resource["error"] = {"message": message}
    return resource


def _queue_time_ms(created_at: object, started_at: str) -> int | None:
    """Milliseconds from the job's creation to its start (the intake's unit), if both are known."""
    if not isinstance(created_at, str):
        return None
    try:
        waited = datetime.fromisoformat(started_at) - datetime.fromisoformat(created_at)
    except ValueError:
        return None
    return max(0, round(waited.total_seconds() * 1000))


def _node(job: Mapping[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if isinstance(job.get("runner_name"), str) and job["runner_name"]:
        node["name"] = job["runner_name"]
    labels = job.get("labels")
    if isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels):
        node["labels"] = labels
    return node


def _steps(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The steps that make an event: completed, with a sendable conclusion and both times."""
    steps = job.get("steps")
    if not isinstance(steps, list):
        return []
    return [
        step
        for step in steps
        if isinstance(step, Mapping)
        and step.get("status") == "completed"
        and step.get("conclusion") in STEP_STATUS
        and isinstance(step.get("started_at"), str)
        and isinstance(step.get("completed_at"), str)
        and isinstance(step.get("name"), str)
    ]


def _step_resource(step: Mapping[str, Any], status: str, message: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "level": "step",
        "name": step["name"],
        "start": step["started_at"],
        "end": step["completed_at"],
        "status": status,
    }
    if message is not None:
        resource["error"] = {"message": message}
    return resource


def _attempt(source: Mapping[str, Any]) -> int:
    """The run attempt; payloads from before GitHub added it are first attempts."""
    attempt = source.get("run_attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise _Unusable(f"run_attempt is not a positive integer (got {attempt!r})")
    return attempt


def _kind_object(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The object a kind is about (``workflow_run`` of a workflow_run hook); WrongKind without."""
    value = payload.get(name)
    if not isinstance(value, Mapping):
        raise WrongKind(f"a GitHub {name} hook has a {name} object; this payload has none")
    return value


def _object(source: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = source.get(name)
    if not isinstance(value, Mapping):
        raise _Unusable(f"the payload has no {name} object")
    return value


def _field(source: Mapping[str, Any], name: str) -> Any:
    value = source.get(name)
    if value is None or isinstance(value, (Mapping, list)) or value == "":
        raise _Unusable(f"the payload has no {name}")
    return value
