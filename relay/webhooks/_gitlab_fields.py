"""GitLab hook fields read into the intake's shapes: times, ids, git, node, error, a build.

Shared by the Pipeline Hook and the Job Hook mapping (``relay.webhooks.gitlab``), so that the
same pipeline or build read from either hook gives the same ids, keys and fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from relay.contract.intake import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE
from relay.contract.urls import strip_credentials
from relay.webhooks.mapped import cut, derived_id

# The intake's integers (queue_time) are 64-bit.
_MAX_INT64 = 2**63 - 1

# GitLab's real hooks write times as "2025-04-01 18:31:49 UTC"; its test hooks and *_iso
# fields write RFC3339. Both occur in one installation.
_GITLAB_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?) UTC")

# A build's status in GitLab -> a finished job's status at the intake. A manual build that
# was not played did not run: skipped is the nearest status a job may have at the intake.
JOB_STATUS = {
    "success": "success",
    "failed": "error",
    "canceled": "canceled",
    "skipped": "skipped",
    "manual": "skipped",
}

# failure_reason values that are the CI system's fault rather than the project's; the
# rest of GitLab's reasons are the project's (script_failure...) or unknown.
_PROVIDER_FAILURES = frozenset(
    {
        "runner_system_failure",
        "stuck_or_timeout_failure",
        "scheduler_failure",
        "data_integrity_failure",
        "runner_unsupported",
        "stale_schedule",
        "archived_failure",
        "unmet_prerequisites",
        "job_execution_timeout",
    }
)
_USER_FAILURES = frozenset({"script_failure", "api_failure", "missing_dependency_failure"})


def parse_time(value: Any) -> datetime | None:
    """A GitLab time in either of its formats, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    match = _GITLAB_TIME.fullmatch(value)
    text = f"{match[1]}T{match[2]}+00:00" if match else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # GitLab keeps its times in UTC; a time without a zone is read as UTC, not local time.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    """``moment`` as the RFC3339 text the intake accepts (UTC, ``Z``)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def queue_ms(seconds: Any) -> int | None:
    """GitLab's queued_duration (seconds, maybe fractional) as the intake's milliseconds;
    None for a value that is no duration or that the intake's 64-bit integer cannot hold."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    milliseconds = round(seconds * 1000)
    return milliseconds if milliseconds <= _MAX_INT64 else None


def host_of(web_url: str) -> str:
    """The GitLab instance's host (and port) from a project's web URL, lower case."""
    return urlsplit(strip_credentials(web_url)).netloc.lower()


def text(value: Any) -> str | None:
    """A non-empty string field, or None."""
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Project:
    """Where a pipeline lives: the identity its ids derive from, and its name and URLs.

    Identity is (host of the project's web URL, project id): the instance's own header
    (X-Gitlab-Instance) is not in the payload, and both hooks carry the project's web URL
    (Pipeline Hook ``project.web_url``, Job Hook ``repository.homepage``) and id.
    """

    host: str
    project_id: str
    web_url: str
    path: str

    def pipeline_id(self, pipeline_id: object) -> str:
        return derived_id("gitlab", self.host, self.project_id, "pipeline", pipeline_id)

    def stage_id(self, pipeline_id: object, stage: str) -> str:
        return derived_id("gitlab", self.host, self.project_id, "stage", pipeline_id, stage)

    def job_id(self, build_id: object) -> str:
        return derived_id("gitlab", self.host, self.project_id, "job", build_id)

    def key(self, *parts: object) -> str:
        """A deduplication key: ``gitlab:<host>/<project id>:<kind>:<id...>:<status>``."""
        return ":".join(["gitlab", f"{self.host}/{self.project_id}", *map(str, parts)])


def project(project_id: Any, web_url: Any, path_with_namespace: Any) -> Project | None:
    """The project, or None when the hook lacks its id or web URL.

    The path is ``path_with_namespace`` when the hook has it (every Pipeline Hook, a Job Hook
    of a recent GitLab), else the web URL's path, which is the same unless GitLab is served
    under a relative URL root. ``project_name`` of a Job Hook is the display name ("John
    Smith / tools"), which the Pipeline Hook does not carry, so it is never used.
    """
    url = text(web_url)
    if project_id is None or isinstance(project_id, bool) or url is None:
        return None
    url = strip_credentials(url.rstrip("/"))
    path = text(path_with_namespace) or urlsplit(url).path.strip("/")
    return Project(host=host_of(url), project_id=str(project_id), web_url=url, path=path)


def git(
    *,
    sha: Any,
    ref: Any,
    is_tag: Any,
    repository_url: Any,
    author_email: Any,
    author_name: Any = None,
    message: Any = None,
    author_time: Any = None,
    default_branch: Any = None,
) -> dict[str, Any] | None:
    """The intake's git object, or None when a required field (sha, repository, email) lacks."""
    required = (text(sha), text(repository_url), text(author_email))
    if None in required:
        return None
    result: dict[str, Any] = {
        "sha": sha,
        "repository_url": strip_credentials(repository_url),
        "author_email": author_email,
    }
    if text(ref):
        result["tag" if is_tag is True else "branch"] = ref
    optional = {
        "author_name": text(author_name),
        "message": text(message),
        "default_branch": text(default_branch),
    }
    result.update({name: value for name, value in optional.items() if value is not None})
    moment = parse_time(author_time)
    if moment is not None:
        result["author_time"] = rfc3339(moment)
    return result


def node(runner: Any) -> dict[str, Any] | None:
    """The runner a build ran on as the intake's node (description as name, tags as labels)."""
    if not isinstance(runner, Mapping):
        return None
    result: dict[str, Any] = {}
    if text(runner.get("description")):
        result["name"] = runner["description"]
    tags = runner.get("tags")
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        result["labels"] = tags
    return result or None


def job_error(failure_reason: Any) -> dict[str, Any]:
    """A failed build's error: GitLab gives only a reason code (script_failure...)."""
    reason = text(failure_reason) or "unknown_failure"
    domain = (
        "provider"
        if reason in _PROVIDER_FAILURES
        else "user"
        if reason in _USER_FAILURES
        else "unknown"
    )
    return {
        "type": cut(reason, MAX_ERROR_TYPE),
        "message": cut(reason, MAX_ERROR_MESSAGE),
        "domain": domain,
    }


@dataclass(frozen=True)
class Build:
    """A build (job) as both hooks describe it: ``builds[]`` items and Job Hooks."""

    id: object
    name: str
    stage: str
    status: str  # GitLab's
    created: datetime | None
    started: datetime | None
    finished: datetime | None
    queued_s: Any
    runner: Any
    failure_reason: Any
    allow_failure: bool

    @property
    def start(self) -> datetime | None:
        """When it started; a build that never ran (skipped, manual) starts when created."""
        return self.started or self.created

    @property
    def end(self) -> datetime | None:
        """When it finished; a build with no finish time (never ran) lasted no time."""
        return self.finished or self.start


def build_from_pipeline(item: Mapping[str, Any]) -> Build:
    """A ``builds[]`` item of a Pipeline Hook."""
    return _build(item, "")


def build_from_job_hook(payload: Mapping[str, Any]) -> Build:
    """The build a Job Hook announces (its fields are prefixed ``build_``, its runner not)."""
    return _build(payload, "build_")


def _build(fields: Mapping[str, Any], prefix: str) -> Build:
    def field(name: str) -> Any:
        return fields.get(prefix + name)

    return Build(
        id=field("id"),
        name=str(field("name") or ""),
        stage=str(field("stage") or ""),
        status=str(field("status") or ""),
        created=parse_time(field("created_at")),
        started=parse_time(field("started_at")),
        finished=parse_time(field("finished_at")),
        queued_s=field("queued_duration"),
        runner=fields.get("runner"),
        failure_reason=field("failure_reason"),
        allow_failure=field("allow_failure") is True,
    )
