"""The request body for one event, built from the run's facts and checked by the relay's schema."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from relay.runner.facts import CIFacts, GitFacts, derived_id

Level = Literal["pipeline", "stage", "job", "step"]
# Levels the intake takes a running event for; a running stage or step is only a start mark.
RUNNING_LEVELS = ("pipeline", "job")

# Where a missing required field can come from, for the message that reports it.
HINTS = {
    "unique_id": "--unique-id or --pipeline-id",
    "pipeline_unique_id": "--unique-id or --pipeline-id",
    "name": "--name",
    "pipeline_name": "--pipeline-name",
    "url": "--url (--pipeline-url for a pipeline)",
    "id": "--id",
    "start": "--start, or an earlier 'emit --status running'",
    "git.author_email": "DD_GIT_COMMIT_AUTHOR_EMAIL, or run in the checkout",
    "git.repository_url": "--git-repository-url or DD_GIT_REPOSITORY_URL",
    "git.sha": "--git-sha or DD_GIT_COMMIT_SHA",
}


@dataclass
class EventOptions:
    """What the command line says about this one event."""

    level: Level
    status: str
    start: str | None = None
    end: str | None = None
    name: str | None = None
    id: str | None = None
    url: str | None = None
    job_name: str | None = None
    partial_retry: bool = False
    tags: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    error_message: str | None = None
    error_type: str | None = None


def event_name(options: EventOptions, facts: CIFacts) -> str | None:
    """The event's name: the flag, else what the provider calls this level."""
    if options.name:
        return options.name
    return {
        "pipeline": facts.pipeline_name,
        "stage": facts.stage_name,
        "job": facts.job_name,
        "step": None,
    }[options.level]


def event_id(options: EventOptions, facts: CIFacts) -> str | None:
    """The id of a stage, job or step; derived from the run's ids where not given.

    Stage and job ids do not depend on the start, so a job's running and finished events
    share one; a step is sent once, and its start tells two steps of one name apart.
    """
    if options.id:
        return options.id
    unique_id = facts.unique_id
    name = event_name(options, facts)
    if options.level == "job" and facts.job_id:
        return facts.job_id
    if unique_id is None or name is None or options.level == "pipeline":
        return None
    if options.level == "step":
        return derived_id(unique_id, "step", facts.job_id or "", name, options.start or "")
    return derived_id(unique_id, options.level, name)


def resource(options: EventOptions, facts: CIFacts) -> dict[str, Any]:
    """The event's ``resource`` object; fields nobody knows are left out for the schema to name."""
    level = options.level
    res: dict[str, Any] = {
        "level": level,
        "name": event_name(options, facts),
        "status": options.status,
        "start": options.start,
        "end": None if options.status == "running" else options.end,
    }
    if level == "pipeline":
        res |= {
            "unique_id": facts.unique_id,
            "pipeline_id": facts.pipeline_id,
            "url": options.url or facts.pipeline_url,
            "partial_retry": options.partial_retry,
        }
        if facts.previous_unique_id:
            res["previous_attempt"] = {"id": facts.previous_unique_id, "url": facts.previous_url}
    else:
        res |= {
            "id": event_id(options, facts),
            "pipeline_name": facts.pipeline_name,
            "pipeline_unique_id": facts.unique_id,
        }
        res |= _child_fields(options, facts)
    res["git"] = _git(facts.git)
    res["node"] = _node(facts)
    res["tags"] = _tags(options, facts) or None
    res["metrics"] = options.metrics or None
    res["parameters"] = options.parameters or None
    res["error"] = _compact({"message": options.error_message, "type": options.error_type})
    return _compact(res) or {}


def _child_fields(options: EventOptions, facts: CIFacts) -> dict[str, Any]:
    stage_id = (
        derived_id(facts.unique_id, "stage", facts.stage_name)
        if facts.unique_id and facts.stage_name
        else None
    )
    if options.level == "job":
        return {
            "url": options.url or facts.job_url,
            "stage_name": facts.stage_name,
            "stage_id": stage_id,
        }
    if options.level == "step":
        return {
            "url": options.url,
            "job_id": facts.job_id,
            "job_name": options.job_name or facts.job_name,
            "stage_name": facts.stage_name,
            "stage_id": stage_id,
        }
    return {}


def _git(git: GitFacts) -> dict[str, Any] | None:
    return _compact(
        {
            "repository_url": git.repository_url,
            "sha": git.sha,
            "branch": git.branch,
            "tag": git.tag,
            "author_name": git.author_name,
            "author_email": git.author_email,
            "author_time": git.author_time,
            "committer_name": git.committer_name,
            "committer_email": git.committer_email,
            "commit_time": git.commit_time,
            "message": git.message,
        }
    )


def _node(facts: CIFacts) -> dict[str, Any] | None:
    return _compact(
        {
            "hostname": socket.gethostname() or None,
            "name": facts.node_name,
            "workspace": facts.node_workspace,
            "labels": facts.node_labels or None,
        }
    )


def _tags(options: EventOptions, facts: CIFacts) -> list[str]:
    tags = []
    if options.level == "pipeline" and facts.pipeline_number:
        tags.append(f"ci.pipeline.number:{facts.pipeline_number}")
    return tags + options.tags


def _compact(values: dict[str, Any]) -> dict[str, Any] | None:
    kept = {key: value for key, value in values.items() if value is not None}
    return kept or None


def body(options: EventOptions, facts: CIFacts) -> bytes:
    """The request body: one event under ``data``, in the intake's shape."""
    attributes: dict[str, Any] = {"resource": resource(options, facts)}
    if facts.provider != "generic":
        attributes["provider_name"] = facts.provider
    document = {"data": {"type": "cipipeline_resource_request", "attributes": attributes}}
    return orjson.dumps(document)


def problems(request_body: bytes) -> list[str]:
    """What the relay's schema finds wrong with ``request_body``, each with a hint where known."""
    from relay.contract.schema import InvalidRequest, parse_request

    try:
        parse_request(request_body)
    except InvalidRequest as exc:
        return [_with_hint(problem) for problem in exc.problems]
    return []


def _with_hint(problem: str) -> str:
    prefix = "data.attributes.resource."
    path, _, message = problem.partition(": ")
    if not path.startswith(prefix) or not message.startswith("Field required"):
        return problem
    hint = HINTS.get(path[len(prefix) :])
    return f"{problem} (give {hint})" if hint else problem
