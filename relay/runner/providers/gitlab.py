"""GitLab CI: ``CI_*`` variables; a pipeline id is unique on its GitLab instance."""

from __future__ import annotations

import re

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, first, label_list

# CI_COMMIT_AUTHOR is "Name <email>".
_AUTHOR = re.compile(r"\s*(.*?)\s*<([^<>]+)>\s*")


def read(env: Env) -> CIFacts:
    """The facts of a GitLab CI job."""
    pipeline_id = first(env, "CI_PIPELINE_ID")
    server = first(env, "CI_SERVER_URL") or ""
    author_name, author_email = _author(first(env, "CI_COMMIT_AUTHOR"))
    # CI_REPOSITORY_URL carries the job token; CI_PROJECT_URL is the same repository, clean.
    repository = first(env, "CI_REPOSITORY_URL")
    project_url = first(env, "CI_PROJECT_URL")
    return CIFacts(
        provider="gitlab",
        run_key=f"gitlab:{server}/{pipeline_id}" if pipeline_id else None,
        pipeline_id=pipeline_id,
        pipeline_name=first(env, "CI_PROJECT_PATH"),
        pipeline_url=first(env, "CI_PIPELINE_URL"),
        pipeline_number=first(env, "CI_PIPELINE_IID"),
        pipeline_start=first(env, "CI_PIPELINE_CREATED_AT"),
        job_id=first(env, "CI_JOB_ID"),
        job_name=first(env, "CI_JOB_NAME"),
        job_url=first(env, "CI_JOB_URL"),
        job_start=first(env, "CI_JOB_STARTED_AT"),
        stage_name=first(env, "CI_JOB_STAGE"),
        node_name=first(env, "CI_RUNNER_DESCRIPTION", "CI_RUNNER_ID"),
        node_workspace=first(env, "CI_PROJECT_DIR"),
        node_labels=label_list(first(env, "CI_RUNNER_TAGS")),
        git=GitFacts(
            repository_url=strip_credentials(repository)
            if repository
            else (f"{project_url}.git" if project_url else None),
            sha=first(env, "CI_COMMIT_SHA"),
            # CI_COMMIT_REF_NAME is the tag on tag pipelines; CI_COMMIT_TAG then wins.
            branch=first(
                env,
                "CI_COMMIT_BRANCH",
                "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
                "CI_COMMIT_REF_NAME",
            ),
            tag=first(env, "CI_COMMIT_TAG"),
            author_name=author_name,
            author_email=author_email,
            author_time=first(env, "CI_COMMIT_TIMESTAMP"),
            message=first(env, "CI_COMMIT_MESSAGE"),
        ),
    )


def _author(text: str | None) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    match = _AUTHOR.fullmatch(text)
    if match is None:
        return text.strip() or None, None
    return match[1] or None, match[2]


PROVIDER = Provider("gitlab", "GITLAB_CI", read)
