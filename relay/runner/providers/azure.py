"""Azure Pipelines: ``BUILD_*``, ``SYSTEM_*`` and ``AGENT_*`` variables; a run is its build id."""

from __future__ import annotations

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, first


def read(env: Env) -> CIFacts:
    """The facts of an Azure Pipelines job."""
    collection = first(env, "SYSTEM_TEAMFOUNDATIONSERVERURI", "SYSTEM_COLLECTIONURI") or ""
    project = first(env, "SYSTEM_TEAMPROJECTID")
    build_id = first(env, "BUILD_BUILDID")
    url = (
        f"{collection}{project}/_build/results?buildId={build_id}"
        if collection and project and build_id
        else None
    )
    job_id = first(env, "SYSTEM_JOBID")
    task = first(env, "SYSTEM_TASKINSTANCEID")
    repository = first(env, "SYSTEM_PULLREQUEST_SOURCEREPOSITORYURI", "BUILD_REPOSITORY_URI")
    return CIFacts(
        provider="azurepipelines",
        run_key=f"azurepipelines:{collection}{project}/{build_id}" if build_id else None,
        pipeline_id=build_id,
        pipeline_name=first(env, "BUILD_DEFINITIONNAME"),
        pipeline_url=url,
        pipeline_number=first(env, "BUILD_BUILDNUMBER"),
        # SYSTEM_JOBID is "a single attempt of a single job": a retried job gets a new one.
        job_id=job_id,
        job_name=first(env, "SYSTEM_JOBDISPLAYNAME"),
        job_url=f"{url}&view=logs&j={job_id}" + (f"&t={task}" if task else "")
        if url and job_id
        else url,
        stage_name=first(env, "SYSTEM_STAGEDISPLAYNAME", "SYSTEM_STAGENAME"),
        node_name=first(env, "AGENT_NAME"),
        node_workspace=first(env, "BUILD_SOURCESDIRECTORY"),
        git=GitFacts(
            repository_url=strip_credentials(repository) if repository else None,
            sha=first(env, "SYSTEM_PULLREQUEST_SOURCECOMMITID", "BUILD_SOURCEVERSION"),
            branch=first(env, "SYSTEM_PULLREQUEST_SOURCEBRANCH", "BUILD_SOURCEBRANCH"),
            # BUILD_REQUESTEDFOR* is who queued the run, not the commit's author: not used.
            message=first(env, "BUILD_SOURCEVERSIONMESSAGE"),
        ),
    )


PROVIDER = Provider("azurepipelines", "TF_BUILD", read)
