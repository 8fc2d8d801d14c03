"""Buildkite: ``BUILDKITE_*`` variables; a build is identified by its UUID."""

from __future__ import annotations

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, first

_META = "BUILDKITE_AGENT_META_DATA_"


def read(env: Env) -> CIFacts:
    """The facts of a Buildkite job."""
    build_id = first(env, "BUILDKITE_BUILD_ID")
    build_url = first(env, "BUILDKITE_BUILD_URL")
    job_id = first(env, "BUILDKITE_JOB_ID")
    repository = first(env, "BUILDKITE_REPO")
    return CIFacts(
        provider="buildkite",
        run_key=f"buildkite:{build_id}" if build_id else None,
        pipeline_id=build_id,
        pipeline_name=first(env, "BUILDKITE_PIPELINE_SLUG"),
        pipeline_url=build_url,
        pipeline_number=first(env, "BUILDKITE_BUILD_NUMBER"),
        job_id=job_id,
        job_name=first(env, "BUILDKITE_LABEL", "BUILDKITE_STEP_KEY"),
        job_url=f"{build_url}#{job_id}" if build_url and job_id else None,
        node_name=first(env, "BUILDKITE_AGENT_NAME", "BUILDKITE_AGENT_ID"),
        node_workspace=first(env, "BUILDKITE_BUILD_CHECKOUT_PATH"),
        node_labels=sorted(
            f"{key[len(_META) :].lower()}:{value}"
            for key, value in env.items()
            if key.startswith(_META) and len(key) > len(_META)
        ),
        git=GitFacts(
            repository_url=strip_credentials(repository) if repository else None,
            sha=first(env, "BUILDKITE_COMMIT"),
            branch=first(env, "BUILDKITE_BRANCH"),
            tag=first(env, "BUILDKITE_TAG"),
            author_name=first(env, "BUILDKITE_BUILD_AUTHOR"),
            author_email=first(env, "BUILDKITE_BUILD_AUTHOR_EMAIL"),
            message=first(env, "BUILDKITE_MESSAGE"),
        ),
    )


PROVIDER = Provider("buildkite", "BUILDKITE", read)
