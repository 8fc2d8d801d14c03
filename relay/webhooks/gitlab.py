"""GitLab's Pipeline Hook and Job Hook mapped to pipeline, stage and job events.

Ids: a pipeline's unique_id derives from (host of the project's web URL, project id,
pipeline id), a job's from (host, project id, build id), a stage's from its pipeline and
name; so a build announced by a Job Hook and again in its Pipeline Hook's ``builds`` gets the
same id and key, and the edge's deduplication sends it once. Names: a pipeline is named by
its own name when it has one (``object_attributes.name``; a Job Hook's ``commit.name``, which
is the pipeline's), else by the project's path (see ``_gitlab_fields.project``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay.webhooks._gitlab_fields import (
    JOB_STATUS,
    Build,
    Project,
    build_from_job_hook,
    build_from_pipeline,
    git,
    job_error,
    node,
    parse_time,
    project,
    queue_ms,
    rfc3339,
    text,
)
from relay.webhooks.mapped import Mapped, WrongKind, event, ignored, unusable

PIPELINE_HOOK = "Pipeline Hook"
JOB_HOOK = "Job Hook"

# A finished pipeline's status in GitLab -> at the intake; running is the in-progress event.
_PIPELINE_STATUS = {
    "success": "success",
    "failed": "error",
    "canceled": "canceled",
    "skipped": "skipped",
    "manual": "blocked",
}


@dataclass(frozen=True)
class _Pipeline:
    """What every event of one pipeline shares."""

    project: Project
    id: object
    name: str
    git: dict[str, Any] | None

    @property
    def unique_id(self) -> str:
        return self.project.pipeline_id(self.id)


def map_gitlab(kind: str, payload: Mapping[str, Any]) -> Mapped:
    """The events of one GitLab delivery; ``kind`` is its ``X-Gitlab-Event`` header."""
    if kind == PIPELINE_HOOK:
        return _pipeline_hook(payload)
    if kind == JOB_HOOK:
        return _job_hook(payload)
    return ignored(f"GitLab {kind or 'event without a kind'} is not a pipeline or job hook")


def _pipeline_hook(payload: Mapping[str, Any]) -> Mapped:
    attributes = payload.get("object_attributes")
    if not isinstance(attributes, Mapping) or payload.get("object_kind") not in (None, "pipeline"):
        raise WrongKind("a GitLab Pipeline Hook has object_kind pipeline and object_attributes")
    status = attributes.get("status")
    if status != "running" and status not in _PIPELINE_STATUS:
        return ignored(f"GitLab pipeline status {status!r} is neither running nor finished")
    proj = _mapping(payload.get("project"))
    where = project(proj.get("id"), proj.get("web_url"), proj.get("path_with_namespace"))
    start = parse_time(attributes.get("created_at"))
    if where is None or attributes.get("id") is None or start is None:
        return unusable("GitLab pipeline hook without project web URL, pipeline id or created_at")
    commit = _mapping(payload.get("commit"))
    author = _mapping(commit.get("author"))
    pipeline = _Pipeline(
        project=where,
        id=attributes["id"],
        name=text(attributes.get("name")) or where.path,
        git=git(
            sha=attributes.get("sha"),
            ref=attributes.get("ref"),
            is_tag=attributes.get("tag"),
            repository_url=proj.get("git_http_url"),
            author_email=author.get("email"),
            author_name=author.get("name"),
            message=commit.get("message"),
            author_time=commit.get("timestamp"),
            default_branch=proj.get("default_branch"),
        ),
    )
    resource: dict[str, Any] = {
        "level": "pipeline",
        "unique_id": pipeline.unique_id,
        "name": pipeline.name,
        "url": text(attributes.get("url")) or f"{where.web_url}/-/pipelines/{pipeline.id}",
        "start": rfc3339(start),
        # GitLab retries jobs inside the same pipeline (same id): no hook field says that a
        # pipeline is a partial retry of another, so it never is here.
        "partial_retry": False,
    }
    resource |= _pipeline_extras(pipeline, attributes, payload)
    key_status = "running" if status == "running" else _PIPELINE_STATUS[status]
    key = where.key("pipeline", pipeline.id, key_status)
    if status == "running":
        return Mapped(events=(event(resource | {"status": "running"}),), keys=(key,))
    builds = [
        build_from_pipeline(item)
        for item in payload.get("builds") or ()
        if isinstance(item, Mapping) and item.get("id") is not None
    ]
    finished = [build for build in builds if build.status in JOB_STATUS and build.start]
    end = parse_time(attributes.get("finished_at")) or _latest_end(finished) or start
    resource |= {"status": _PIPELINE_STATUS[status], "end": rfc3339(max(end, start))}
    stages = _stages(pipeline, finished)
    jobs = [_job(pipeline, build) for build in finished]
    return Mapped(
        events=(event(resource), *(e for e, _ in stages), *(e for e, _ in jobs)),
        keys=(key, *(k for _, k in stages), *(k for _, k in jobs)),
    )


def _pipeline_extras(
    pipeline: _Pipeline, attributes: Mapping[str, Any], payload: Mapping[str, Any]
) -> dict[str, Any]:
    """The optional pipeline fields: git, queue time, the upstream pipeline."""
    extras: dict[str, Any] = {}
    if pipeline.git is not None:
        extras["git"] = pipeline.git
    queued = queue_ms(attributes.get("queued_duration"))
    if queued is not None:
        extras["queue_time"] = queued
    upstream = _mapping(payload.get("source_pipeline"))
    upstream_project = _mapping(upstream.get("project"))
    parent = project(
        upstream_project.get("id"),
        upstream_project.get("web_url"),
        upstream_project.get("path_with_namespace"),
    )
    if parent is not None and upstream.get("pipeline_id") is not None:
        # Multi-project and child pipelines: the parent's id as its own hooks derive it.
        extras["parent_pipeline"] = {
            "id": parent.pipeline_id(upstream["pipeline_id"]),
            "url": f"{parent.web_url}/-/pipelines/{upstream['pipeline_id']}",
        }
    return extras


def _job_hook(payload: Mapping[str, Any]) -> Mapped:
    if payload.get("object_kind") not in (None, "build") or "build_status" not in payload:
        raise WrongKind("a GitLab Job Hook has object_kind build and build_status")
    build = build_from_job_hook(payload)
    if build.status not in JOB_STATUS:
        return ignored(f"GitLab job status {build.status!r} is not finished")
    # A recent GitLab adds the project's attributes (path_with_namespace...); older ones
    # have only project_id and the repository (whose homepage is the project's web URL).
    proj = _mapping(payload.get("project"))
    repository = _mapping(payload.get("repository"))
    where = project(
        payload.get("project_id", proj.get("id")),
        proj.get("web_url") or repository.get("homepage"),
        proj.get("path_with_namespace"),
    )
    if where is None or payload.get("pipeline_id") is None or build.id is None or not build.start:
        return unusable("GitLab job hook without project web URL, pipeline id, build id or times")
    commit = _mapping(payload.get("commit"))  # its id and name are the pipeline's
    pipeline = _Pipeline(
        project=where,
        id=payload["pipeline_id"],
        name=text(commit.get("name")) or where.path,
        git=git(
            sha=payload.get("sha"),
            ref=payload.get("ref"),
            is_tag=payload.get("tag"),
            repository_url=proj.get("git_http_url") or repository.get("git_http_url"),
            author_email=commit.get("author_email"),
            author_name=commit.get("author_name"),
            message=commit.get("message"),
            default_branch=proj.get("default_branch"),
        ),
    )
    job, key = _job(pipeline, build)
    return Mapped(events=(job,), keys=(key,))


def _job(pipeline: _Pipeline, build: Build) -> tuple[dict[str, Any], str]:
    """A finished build's job event and key (its start and end are known: see Build)."""
    start, end = build.start, build.end
    if start is None or end is None:  # callers keep only builds with a start
        raise ValueError(f"GitLab build {build.id} has no start time")
    status = JOB_STATUS[build.status]
    resource: dict[str, Any] = {
        "level": "job",
        "id": pipeline.project.job_id(build.id),
        "name": build.name or str(build.id),
        "url": f"{pipeline.project.web_url}/-/jobs/{build.id}",
        "status": status,
        "start": rfc3339(start),
        "end": rfc3339(max(end, start)),
        "pipeline_unique_id": pipeline.unique_id,
        "pipeline_name": pipeline.name,
    }
    if build.stage:
        resource["stage_name"] = build.stage
        resource["stage_id"] = pipeline.project.stage_id(pipeline.id, build.stage)
    optional = {
        "queue_time": queue_ms(build.queued_s),
        "node": node(build.runner),
        "git": pipeline.git,
        "error": job_error(build.failure_reason) if status == "error" else None,
    }
    resource |= {name: value for name, value in optional.items() if value is not None}
    return event(resource), pipeline.project.key("job", build.id, status)


def _stages(pipeline: _Pipeline, builds: list[Build]) -> list[tuple[dict[str, Any], str]]:
    """One stage event per stage of the finished builds: GitLab sends none of its own."""
    by_stage: dict[str, list[Build]] = {}
    for build in builds:
        if build.stage:
            by_stage.setdefault(build.stage, []).append(build)
    result = []
    for name, members in by_stage.items():
        status = _stage_status(members)
        start = min(build.start for build in members if build.start)
        end = max(build.end for build in members if build.end)
        resource: dict[str, Any] = {
            "level": "stage",
            "id": pipeline.project.stage_id(pipeline.id, name),
            "name": name,
            "status": status,
            "start": rfc3339(start),
            "end": rfc3339(max(end, start)),
            "pipeline_unique_id": pipeline.unique_id,
            "pipeline_name": pipeline.name,
        }
        if pipeline.git is not None:
            resource["git"] = pipeline.git
        result.append((event(resource), pipeline.project.key("stage", pipeline.id, name, status)))
    return result


def _stage_status(builds: list[Build]) -> str:
    """A stage's status from its builds, as GitLab composes it: a failure fails the stage
    unless the build may fail; else a cancel cancels it; a stage of skipped builds is
    skipped; anything else succeeded."""
    statuses = {JOB_STATUS[build.status] for build in builds if not _allowed_failure(build)}
    if "error" in statuses:
        return "error"
    if "canceled" in statuses:
        return "canceled"
    if statuses <= {"skipped"} and all(build.status != "failed" for build in builds):
        return "skipped"
    return "success"


def _allowed_failure(build: Build) -> bool:
    return build.status == "failed" and build.allow_failure


def _latest_end(builds: list[Build]) -> datetime | None:
    ends = [build.end for build in builds if build.end]
    return max(ends) if ends else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
