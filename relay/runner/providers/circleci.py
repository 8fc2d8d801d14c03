"""CircleCI: ``CIRCLE_*`` variables; the workflow is the pipeline, identified by its id."""

from __future__ import annotations

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, expand_home, first


def read(env: Env) -> CIFacts:
    """The facts of a CircleCI job."""
    workflow = first(env, "CIRCLE_WORKFLOW_ID")
    repository = first(env, "CIRCLE_REPOSITORY_URL")
    return CIFacts(
        provider="circleci",
        # "Rerun" makes a new workflow, with a new id.
        run_key=f"circleci:{workflow}" if workflow else None,
        pipeline_id=workflow,
        pipeline_name=first(env, "CIRCLE_PROJECT_REPONAME"),
        pipeline_url=f"https://app.circleci.com/pipelines/workflows/{workflow}"
        if workflow
        else None,
        pipeline_number=first(env, "CIRCLE_PIPELINE_NUMBER"),
        job_id=first(env, "CIRCLE_BUILD_NUM"),
        job_name=first(env, "CIRCLE_JOB"),
        job_url=first(env, "CIRCLE_BUILD_URL"),
        node_workspace=expand_home(first(env, "CIRCLE_WORKING_DIRECTORY"), env),
        git=GitFacts(
            repository_url=strip_credentials(repository) if repository else None,
            sha=first(env, "CIRCLE_SHA1"),
            branch=first(env, "CIRCLE_BRANCH"),
            tag=first(env, "CIRCLE_TAG"),
        ),
    )


PROVIDER = Provider("circleci", "CIRCLECI", read)
