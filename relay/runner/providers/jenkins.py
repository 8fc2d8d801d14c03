"""Jenkins: core and Git plugin variables; a build is identified by its ``BUILD_TAG``."""

from __future__ import annotations

from urllib.parse import quote

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, first
from relay.runner.refs import branch_or_tag


def read(env: Env) -> CIFacts:
    """The facts of a Jenkins build."""
    job_name = first(env, "JOB_NAME")
    number = first(env, "BUILD_NUMBER")
    build_tag = first(env, "BUILD_TAG") or (
        f"jenkins-{job_name}-{number}" if job_name and number else None
    )
    # Prefixed with the controller's URL: two controllers can share a job name and number.
    controller = first(env, "JENKINS_URL") or ""
    # Pull request builds name their branch in CHANGE_BRANCH (BRANCH_NAME is then PR-N).
    branch = first(env, "CHANGE_BRANCH", "GIT_BRANCH", "BRANCH_NAME")
    repository = first(env, "GIT_URL", "GIT_URL_1")
    build_url = first(env, "BUILD_URL")
    return CIFacts(
        provider="jenkins",
        run_key=f"jenkins:{controller}{build_tag}" if build_tag else None,
        pipeline_id=build_tag,
        pipeline_name=_pipeline_name(job_name, branch),
        pipeline_url=build_url,
        pipeline_number=number,
        # Jenkins has no job id or job url of its own below the build.
        job_url=build_url,
        stage_name=first(env, "STAGE_NAME"),
        node_name=first(env, "NODE_NAME"),
        node_workspace=first(env, "WORKSPACE"),
        node_labels=(first(env, "NODE_LABELS") or "").split(),
        git=GitFacts(
            repository_url=strip_credentials(repository) if repository else None,
            sha=first(env, "GIT_COMMIT"),
            branch=branch,
            tag=first(env, "TAG_NAME"),
        ),
    )


def _pipeline_name(job_name: str | None, branch: str | None) -> str | None:
    """The job's name without the branch or matrix axis that multibranch and matrix add."""
    if not job_name:
        return None
    segments = job_name.split("/")
    if len(segments) > 1 and "=" in segments[1]:
        return segments[0]
    name = branch_or_tag(branch, None)[0] if branch else None
    if name:
        for suffix in (f"/{name}", f"/{quote(name, safe='')}"):
            if job_name.endswith(suffix) and len(job_name) > len(suffix):
                return job_name[: -len(suffix)]
    return job_name


PROVIDER = Provider("jenkins", "JENKINS_URL", read)
