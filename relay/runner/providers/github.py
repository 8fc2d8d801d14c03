"""GitHub Actions: ``GITHUB_*`` variables; a run is identified by its id and attempt."""

from __future__ import annotations

from relay.contract.urls import strip_credentials
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.providers.common import Env, Provider, expand_home, first


def read(env: Env) -> CIFacts:
    """The facts of a GitHub Actions job."""
    server = strip_credentials(first(env, "GITHUB_SERVER_URL") or "https://github.com")
    repo = env.get("GITHUB_REPOSITORY", "")
    base = f"{server}/{repo}"
    run_id = env.get("GITHUB_RUN_ID")
    attempt = first(env, "GITHUB_RUN_ATTEMPT")
    run_url = f"{base}/actions/runs/{run_id}" if run_id else None
    facts = CIFacts(
        provider="github",
        # GITHUB_RUN_ID survives a re-run; the attempt tells the runs apart.
        run_key=f"github:{base}/{run_id}/{attempt or '1'}" if run_id else None,
        pipeline_id=run_id,
        pipeline_name=first(env, "GITHUB_WORKFLOW"),
        pipeline_url=f"{run_url}/attempts/{attempt}" if run_url and attempt else run_url,
        pipeline_number=first(env, "GITHUB_RUN_NUMBER"),
        node_name=first(env, "RUNNER_NAME"),
        node_workspace=expand_home(first(env, "GITHUB_WORKSPACE"), env),
        git=GitFacts(
            repository_url=f"{base}.git" if repo else None,
            sha=first(env, "GITHUB_SHA"),
            # GITHUB_HEAD_REF is the pull request's branch; GITHUB_REF is then refs/pull/N/merge.
            branch=first(env, "GITHUB_HEAD_REF", "GITHUB_REF"),
        ),
    )
    if run_id and attempt and attempt.isdigit() and int(attempt) > 1:
        previous = int(attempt) - 1
        facts.previous_run_key = f"github:{base}/{run_id}/{previous}"
        facts.previous_url = f"{run_url}/attempts/{previous}"
    _job(env, facts, base, run_url)
    return facts


def _job(env: Env, facts: CIFacts, base: str, run_url: str | None) -> None:
    # JOB_CHECK_RUN_ID is not a default variable: a workflow exports it from
    # ${{ job.check_run_id }}. Without it the job is known only by its YAML key, which matrix
    # legs share.
    check_run = first(env, "JOB_CHECK_RUN_ID")
    job_key = first(env, "GITHUB_JOB")
    facts.job_id = check_run or job_key
    facts.job_name = first(env, "DD_GITHUB_JOB_NAME", "GITHUB_JOB")
    if check_run and run_url:
        facts.job_url = f"{run_url}/job/{check_run}"
    elif facts.git.sha:
        facts.job_url = f"{base}/commit/{facts.git.sha}/checks"


PROVIDER = Provider("github", "GITHUB_ACTIONS", read)
