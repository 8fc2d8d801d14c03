"""Bitbucket Pipelines: ``BITBUCKET_*`` variables; a run is its pipeline UUID."""

from __future__ import annotations

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, first


def read(env: Env) -> CIFacts:
    """The facts of a Bitbucket Pipelines step (Bitbucket's steps are jobs here)."""
    pipeline = (first(env, "BITBUCKET_PIPELINE_UUID") or "").strip("{}") or None
    full_name = first(env, "BITBUCKET_REPO_FULL_NAME")
    number = first(env, "BITBUCKET_BUILD_NUMBER")
    url = (
        f"https://bitbucket.org/{full_name}/addon/pipelines/home#!/results/{number}"
        if full_name and number
        else None
    )
    # The https origin is preferred to the ssh one: it is also the repository's web address.
    repository = first(env, "BITBUCKET_GIT_HTTP_ORIGIN", "BITBUCKET_GIT_SSH_ORIGIN")
    return CIFacts(
        provider="bitbucket",
        run_key=f"bitbucket:{pipeline}" if pipeline else None,
        pipeline_id=pipeline,
        pipeline_name=full_name,
        pipeline_url=url,
        pipeline_number=number,
        job_id=(first(env, "BITBUCKET_STEP_UUID") or "").strip("{}") or None,
        job_url=url,
        node_workspace=first(env, "BITBUCKET_CLONE_DIR"),
        git=GitFacts(
            repository_url=strip_credentials(repository) if repository else None,
            sha=first(env, "BITBUCKET_COMMIT"),
            branch=first(env, "BITBUCKET_BRANCH"),
            tag=first(env, "BITBUCKET_TAG"),
        ),
    )


PROVIDER = Provider("bitbucket", "BITBUCKET_COMMIT", read)
