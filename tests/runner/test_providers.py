"""Each provider's documented variables, with a real checkout, give the expected event."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson

from relay.contract.schema import parse_request
from relay.runner import providers
from relay.runner.arguments import PROVIDER_NAMES
from relay.runner.event import EventOptions, body
from relay.runner.facts import derived_id
from relay.runner.resolve import Overrides, resolve
from relay.testing.samples import ago
from tests.runner.runner_cli import AUTHOR, COMMITTER, MESSAGE

REPO_URL = "https://git.example.com/acme/engine.git"


def event(
    env: dict[str, str],
    cwd: Path,
    level: str = "job",
    status: str = "success",
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The resource of an event built from ``env``, after the relay's schema accepted it."""
    options = EventOptions(level=level, status=status, start=ago(seconds=60))  # type: ignore[arg-type]
    if status != "running":
        options.end = ago(seconds=1)
    facts = resolve(env, overrides or Overrides(), cwd)
    request = body(options, facts)
    parse_request(request)  # raises, listing the problems, if the relay would refuse it
    resource: dict[str, Any] = orjson.loads(request)["data"]["attributes"]["resource"]
    for key in ("start", "end"):
        resource.pop(key, None)
    return resource


def commit_fields(sha: str) -> dict[str, str]:
    """The git fields the checkout gives for its commit."""
    return {
        "sha": sha,
        "author_name": AUTHOR[0],
        "author_email": AUTHOR[1],
        "author_time": AUTHOR[2],
        "committer_name": COMMITTER[0],
        "committer_email": COMMITTER[1],
        "commit_time": COMMITTER[2],
        "message": MESSAGE,
    }


HOST = socket.gethostname()


def test_github_actions(checkout: tuple[Path, str]) -> None:
    """GitHub: the run id and attempt give unique_id; the tag ref becomes git.tag."""
    cwd, sha = checkout
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SERVER_URL": "https://user:pw@github.com",
        "GITHUB_REPOSITORY": "acme/engine",
        "GITHUB_RUN_ID": "9876543210",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_RUN_NUMBER": "42",
        "GITHUB_WORKFLOW": "CI",
        "GITHUB_JOB": "test",
        "JOB_CHECK_RUN_ID": "31415926",
        "GITHUB_SHA": sha,
        "GITHUB_REF": "refs/tags/v1.2.3",
        "GITHUB_WORKSPACE": "/home/runner/work/engine/engine",
        "RUNNER_NAME": "GitHub Actions 7",
    }
    unique_id = derived_id("github:https://github.com/acme/engine/9876543210/1")
    assert {
        "level": "job",
        "name": "test",
        "status": "success",
        "id": "31415926",
        "pipeline_name": "CI",
        "pipeline_unique_id": unique_id,
        "url": "https://github.com/acme/engine/actions/runs/9876543210/job/31415926",
        "git": {
            "repository_url": "https://github.com/acme/engine.git",
            "tag": "v1.2.3",
            **commit_fields(sha),
        },
        "node": {
            "hostname": HOST,
            "name": "GitHub Actions 7",
            "workspace": "/home/runner/work/engine/engine",
        },
    } == event(env, cwd)
    pipeline = event(env, cwd, level="pipeline")
    assert (unique_id, "9876543210", "CI", False, ["ci.pipeline.number:42"]) == (
        pipeline["unique_id"],
        pipeline["pipeline_id"],
        pipeline["name"],
        pipeline["partial_retry"],
        pipeline["tags"],
    )
    assert "https://github.com/acme/engine/actions/runs/9876543210/attempts/1" == pipeline["url"]


def test_github_rerun_gets_a_new_unique_id_linked_to_the_previous(
    checkout: tuple[Path, str],
) -> None:
    """A second attempt of a GitHub run is a new pipeline whose previous_attempt is the first."""
    cwd, sha = checkout
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/engine",
        "GITHUB_RUN_ID": "77",
        "GITHUB_WORKFLOW": "CI",
        "GITHUB_SHA": sha,
        "GITHUB_REF": "refs/heads/main",
    }
    first = event(env | {"GITHUB_RUN_ATTEMPT": "1"}, cwd, level="pipeline")
    second = event(env | {"GITHUB_RUN_ATTEMPT": "2"}, cwd, level="pipeline")
    assert first["unique_id"] != second["unique_id"]
    assert {
        "id": first["unique_id"],
        "url": "https://github.com/acme/engine/actions/runs/77/attempts/1",
    } == second["previous_attempt"]
    assert "previous_attempt" not in first


def test_running_and_finished_events_of_a_run_share_their_ids(checkout: tuple[Path, str]) -> None:
    """The running and the finished event of one job carry the same pipeline and job ids."""
    cwd, sha = checkout
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/engine",
        "GITHUB_RUN_ID": "77",
        "GITHUB_RUN_ATTEMPT": "3",
        "GITHUB_WORKFLOW": "CI",
        "GITHUB_JOB": "build",
        "GITHUB_SHA": sha,
    }
    running = event(env, cwd, status="running")
    finished = event(env, cwd, status="error")
    assert (running["pipeline_unique_id"], running["id"]) == (
        finished["pipeline_unique_id"],
        finished["id"],
    )


def test_gitlab_ci(checkout: tuple[Path, str]) -> None:
    """GitLab: the job token leaves the repository URL; a tag pipeline reports only the tag."""
    cwd, sha = checkout
    env = {
        "GITLAB_CI": "true",
        "CI_SERVER_URL": "https://gitlab.example.com",
        "CI_PIPELINE_ID": "1234",
        "CI_PIPELINE_IID": "56",
        "CI_PIPELINE_URL": "https://gitlab.example.com/acme/engine/-/pipelines/1234",
        "CI_PROJECT_PATH": "acme/engine",
        "CI_PROJECT_URL": "https://gitlab.example.com/acme/engine",
        "CI_PROJECT_DIR": "/builds/acme/engine",
        "CI_REPOSITORY_URL": "https://gitlab-ci-token:glcbt-secret@gitlab.example.com/acme/engine.git",
        "CI_COMMIT_SHA": sha,
        "CI_COMMIT_REF_NAME": "v1.0",
        "CI_COMMIT_TAG": "v1.0",
        "CI_COMMIT_AUTHOR": "Someone Else <else@example.com>",
        "CI_JOB_ID": "998877",
        "CI_JOB_NAME": "unit tests",
        "CI_JOB_URL": "https://gitlab.example.com/acme/engine/-/jobs/998877",
        "CI_JOB_STAGE": "test",
        "CI_RUNNER_DESCRIPTION": "shared-runner-3",
        "CI_RUNNER_TAGS": '["arch:arm64", "linux"]',
    }
    unique_id = derived_id("gitlab:https://gitlab.example.com/1234")
    assert {
        "level": "job",
        "name": "unit tests",
        "status": "success",
        "id": "998877",
        "pipeline_name": "acme/engine",
        "pipeline_unique_id": unique_id,
        "url": "https://gitlab.example.com/acme/engine/-/jobs/998877",
        "stage_name": "test",
        "stage_id": derived_id(unique_id, "stage", "test"),
        "git": {
            "repository_url": "https://gitlab.example.com/acme/engine.git",
            "tag": "v1.0",
            # the checkout's commit wins over CI_COMMIT_AUTHOR
            **commit_fields(sha),
        },
        "node": {
            "hostname": HOST,
            "name": "shared-runner-3",
            "workspace": "/builds/acme/engine",
            "labels": ["arch:arm64", "linux"],
        },
    } == event(env, cwd)


def test_gitlab_without_a_checkout_uses_its_commit_variables(tmp_path: Path) -> None:
    """With no checkout, GitLab's CI_COMMIT_* variables give the author, time and message."""
    env = {
        "GITLAB_CI": "true",
        "CI_PIPELINE_ID": "1",
        "CI_PROJECT_PATH": "acme/engine",
        "CI_PIPELINE_URL": "https://gitlab.example.com/acme/engine/-/pipelines/1",
        "CI_PROJECT_URL": "https://gitlab.example.com/acme/engine",
        "CI_COMMIT_SHA": "a" * 40,
        "CI_COMMIT_BRANCH": "main",
        "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_AUTHOR": "Grace Hopper <grace@example.com>",
        "CI_COMMIT_TIMESTAMP": "2025-02-03T04:05:06+00:00",
        "CI_COMMIT_MESSAGE": "Fix the moth",
        "CI_RUNNER_TAGS": "docker, linux",
    }
    resource = event(env, tmp_path, level="pipeline")
    assert {
        "repository_url": "https://gitlab.example.com/acme/engine.git",
        "sha": "a" * 40,
        "branch": "main",
        "author_name": "Grace Hopper",
        "author_email": "grace@example.com",
        "author_time": "2025-02-03T04:05:06+00:00",
        "message": "Fix the moth",
    } == resource["git"]
    assert ["docker", "linux"] == resource["node"]["labels"]


def test_jenkins(checkout: tuple[Path, str]) -> None:
    """Jenkins: BUILD_TAG under the controller's URL gives unique_id; origin/ leaves the branch."""
    cwd, sha = checkout
    env = {
        "JENKINS_URL": "https://jenkins.example.com/",
        "BUILD_TAG": "jenkins-engine-feature-one-17",
        "BUILD_NUMBER": "17",
        "BUILD_URL": "https://jenkins.example.com/job/engine/job/feature%2Fone/17/",
        "JOB_NAME": "engine/feature%2Fone",
        "GIT_URL": "https://builder:token@git.example.com/acme/engine.git",
        "GIT_COMMIT": sha,
        "GIT_BRANCH": "origin/feature/one",
        "BRANCH_NAME": "feature/one",
        "STAGE_NAME": "Test",
        "NODE_NAME": "agent-2",
        "NODE_LABELS": "agent-2 linux docker",
        "WORKSPACE": "/var/jenkins/workspace/engine",
    }
    unique_id = derived_id("jenkins:https://jenkins.example.com/jenkins-engine-feature-one-17")
    options = Overrides()
    assert {
        "level": "job",
        "name": "unit",
        "status": "success",
        "id": derived_id(unique_id, "job", "unit"),
        "pipeline_name": "engine",
        "pipeline_unique_id": unique_id,
        "url": "https://jenkins.example.com/job/engine/job/feature%2Fone/17/",
        "stage_name": "Test",
        "stage_id": derived_id(unique_id, "stage", "Test"),
        "git": {"repository_url": REPO_URL, "branch": "feature/one", **commit_fields(sha)},
        "node": {
            "hostname": HOST,
            "name": "agent-2",
            "workspace": "/var/jenkins/workspace/engine",
            "labels": ["agent-2", "linux", "docker"],
        },
    } == _named(event, env | {"_NAME": "unit"}, cwd, options)


def _named(build: Any, env: dict[str, str], cwd: Path, overrides: Overrides) -> dict[str, Any]:
    """An event whose name is the env's ``_NAME`` (for providers with no job name)."""
    name = env.pop("_NAME")
    options = EventOptions(
        level="job", status="success", start=ago(seconds=60), end=ago(seconds=1), name=name
    )
    request = body(options, resolve(env, overrides, cwd))
    parse_request(request)
    resource: dict[str, Any] = orjson.loads(request)["data"]["attributes"]["resource"]
    del resource["start"], resource["end"]
    return resource


def test_buildkite(checkout: tuple[Path, str]) -> None:
    """Buildkite: the build UUID gives unique_id; agent metadata become node labels."""
    cwd, sha = checkout
    env = {
        "BUILDKITE": "true",
        "BUILDKITE_BUILD_ID": "0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b",
        "BUILDKITE_BUILD_NUMBER": "88",
        "BUILDKITE_BUILD_URL": "https://buildkite.com/acme/engine/builds/88",
        "BUILDKITE_PIPELINE_SLUG": "engine",
        "BUILDKITE_JOB_ID": "0190a1b2-0000-4000-8000-000000000001",
        "BUILDKITE_LABEL": ":pytest: tests",
        "BUILDKITE_REPO": "git@github.com:acme/engine.git",
        "BUILDKITE_COMMIT": sha,
        "BUILDKITE_BRANCH": "main",
        "BUILDKITE_TAG": "",
        "BUILDKITE_BUILD_AUTHOR": "Ada Lovelace",
        "BUILDKITE_BUILD_AUTHOR_EMAIL": "ada@example.com",
        "BUILDKITE_MESSAGE": "Add the difference engine",
        "BUILDKITE_AGENT_NAME": "ci-agent-1",
        "BUILDKITE_AGENT_META_DATA_QUEUE": "default",
        "BUILDKITE_AGENT_META_DATA_OS": "linux",
        "BUILDKITE_BUILD_CHECKOUT_PATH": "/buildkite/builds/engine",
    }
    unique_id = derived_id("buildkite:0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b")
    assert {
        "level": "job",
        "name": ":pytest: tests",
        "status": "success",
        "id": "0190a1b2-0000-4000-8000-000000000001",
        "pipeline_name": "engine",
        "pipeline_unique_id": unique_id,
        "url": "https://buildkite.com/acme/engine/builds/88#0190a1b2-0000-4000-8000-000000000001",
        "git": {
            "repository_url": "git@github.com:acme/engine.git",
            "branch": "main",
            **commit_fields(sha),
        },
        "node": {
            "hostname": HOST,
            "name": "ci-agent-1",
            "workspace": "/buildkite/builds/engine",
            "labels": ["os:linux", "queue:default"],
        },
    } == event(env, cwd)


def test_circleci(checkout: tuple[Path, str]) -> None:
    """CircleCI: the workflow is the pipeline; ~ in the working directory is expanded."""
    cwd, sha = checkout
    env = {
        "CIRCLECI": "true",
        "HOME": "/home/circleci",
        "CIRCLE_WORKFLOW_ID": "5c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
        "CIRCLE_PROJECT_REPONAME": "engine",
        "CIRCLE_BUILD_NUM": "4321",
        "CIRCLE_JOB": "test",
        "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/engine/4321",
        "CIRCLE_REPOSITORY_URL": "git@github.com:acme/engine.git",
        "CIRCLE_SHA1": sha,
        "CIRCLE_BRANCH": "main",
        "CIRCLE_WORKING_DIRECTORY": "~/project",
    }
    unique_id = derived_id("circleci:5c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")
    assert {
        "level": "job",
        "name": "test",
        "status": "success",
        "id": "4321",
        "pipeline_name": "engine",
        "pipeline_unique_id": unique_id,
        "url": "https://circleci.com/gh/acme/engine/4321",
        "git": {
            "repository_url": "git@github.com:acme/engine.git",
            "branch": "main",
            **commit_fields(sha),
        },
        "node": {"hostname": HOST, "workspace": "/home/circleci/project"},
    } == event(env, cwd)
    assert (
        "https://app.circleci.com/pipelines/workflows/5c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
        == (event(env, cwd, level="pipeline")["url"])
    )


def test_azure_pipelines(checkout: tuple[Path, str]) -> None:
    """Azure: the build id under the collection gives unique_id; refs/heads/ leaves the branch."""
    cwd, sha = checkout
    env = {
        "TF_BUILD": "True",
        "SYSTEM_TEAMFOUNDATIONSERVERURI": "https://dev.azure.com/acme/",
        "SYSTEM_TEAMPROJECTID": "6f1b2c3d-1111-2222-3333-444455556666",
        "BUILD_BUILDID": "2024",
        "BUILD_BUILDNUMBER": "20250101.1",
        "BUILD_DEFINITIONNAME": "engine-ci",
        "BUILD_REPOSITORY_URI": "https://acme@dev.azure.com/acme/engine/_git/engine",
        "BUILD_SOURCEVERSION": sha,
        "BUILD_SOURCEBRANCH": "refs/heads/main",
        "BUILD_SOURCESDIRECTORY": "/home/vsts/work/1/s",
        "SYSTEM_JOBID": "12f1170f-54f2-53f3-20dd-22fc7dff55f9",
        "SYSTEM_JOBDISPLAYNAME": "Run tests",
        "SYSTEM_TASKINSTANCEID": "aa11bb22-cc33-dd44-ee55-ff6677889900",
        "SYSTEM_STAGEDISPLAYNAME": "Test",
        "AGENT_NAME": "Hosted Agent",
    }
    unique_id = derived_id(
        "azurepipelines:https://dev.azure.com/acme/6f1b2c3d-1111-2222-3333-444455556666/2024"
    )
    url = (
        "https://dev.azure.com/acme/6f1b2c3d-1111-2222-3333-444455556666"
        "/_build/results?buildId=2024"
    )
    assert {
        "level": "job",
        "name": "Run tests",
        "status": "success",
        "id": "12f1170f-54f2-53f3-20dd-22fc7dff55f9",
        "pipeline_name": "engine-ci",
        "pipeline_unique_id": unique_id,
        "url": f"{url}&view=logs&j=12f1170f-54f2-53f3-20dd-22fc7dff55f9"
        "&t=aa11bb22-cc33-dd44-ee55-ff6677889900",
        "stage_name": "Test",
        "stage_id": derived_id(unique_id, "stage", "Test"),
        "git": {
            "repository_url": "https://dev.azure.com/acme/engine/_git/engine",
            "branch": "main",
            **commit_fields(sha),
        },
        "node": {"hostname": HOST, "name": "Hosted Agent", "workspace": "/home/vsts/work/1/s"},
    } == event(env, cwd)
    assert url == event(env, cwd, level="pipeline")["url"]


def test_bitbucket_pipelines(checkout: tuple[Path, str]) -> None:
    """Bitbucket: braces leave the pipeline UUID; the https origin is the repository URL."""
    cwd, sha = checkout
    env = {
        "BITBUCKET_COMMIT": sha,
        "BITBUCKET_PIPELINE_UUID": "{7d3c9f0e-1a2b-4c5d-8e9f-0a1b2c3d4e5f}",
        "BITBUCKET_STEP_UUID": "{11111111-2222-4333-8444-555555555555}",
        "BITBUCKET_BUILD_NUMBER": "314",
        "BITBUCKET_REPO_FULL_NAME": "acme/engine",
        "BITBUCKET_GIT_HTTP_ORIGIN": "http://bitbucket.org/acme/engine",
        "BITBUCKET_GIT_SSH_ORIGIN": "git@bitbucket.org:acme/engine.git",
        "BITBUCKET_BRANCH": "main",
        "BITBUCKET_CLONE_DIR": "/opt/atlassian/pipelines/agent/build",
    }
    unique_id = derived_id("bitbucket:7d3c9f0e-1a2b-4c5d-8e9f-0a1b2c3d4e5f")
    url = "https://bitbucket.org/acme/engine/addon/pipelines/home#!/results/314"
    assert {
        "level": "job",
        "name": "lint",
        "status": "success",
        "id": "11111111-2222-4333-8444-555555555555",
        "pipeline_name": "acme/engine",
        "pipeline_unique_id": unique_id,
        "url": url,
        "git": {
            "repository_url": "http://bitbucket.org/acme/engine",
            "branch": "main",
            **commit_fields(sha),
        },
        "node": {"hostname": HOST, "workspace": "/opt/atlassian/pipelines/agent/build"},
    } == _named(event, env | {"_NAME": "lint"}, cwd, Overrides())
    pipeline = event(env, cwd, level="pipeline")
    assert (unique_id, "7d3c9f0e-1a2b-4c5d-8e9f-0a1b2c3d4e5f", url) == (
        pipeline["unique_id"],
        pipeline["pipeline_id"],
        pipeline["url"],
    )


def test_generic_takes_everything_from_flags_and_the_checkout(checkout: tuple[Path, str]) -> None:
    """With no provider, the flags name the run and the checkout gives the whole git object."""
    cwd, sha = checkout
    overrides = Overrides(
        pipeline_id="nightly-2025-01-01",
        pipeline_name="nightly",
        pipeline_url="https://ci.example.com/nightly/1",
    )
    resource = event({}, cwd, level="pipeline", overrides=overrides)
    assert {
        "level": "pipeline",
        "name": "nightly",
        "status": "success",
        "pipeline_id": "nightly-2025-01-01",
        "url": "https://ci.example.com/nightly/1",
        "partial_retry": False,
        "unique_id": derived_id("generic:nightly-2025-01-01"),
        "git": {"repository_url": REPO_URL, "branch": "main", **commit_fields(sha)},
        "node": {"hostname": HOST},
    } == resource


def test_dd_git_variables_and_flags_override_in_order(checkout: tuple[Path, str]) -> None:
    """Flags beat DD_GIT_*, which beat the provider, which beats the checkout."""
    cwd, sha = checkout
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/engine",
        "GITHUB_RUN_ID": "1",
        "GITHUB_WORKFLOW": "CI",
        "GITHUB_JOB": "test",
        "GITHUB_SHA": sha,
        "GITHUB_REF": "refs/heads/main",
        "DD_GIT_BRANCH": "release/1.x",
        "DD_GIT_COMMIT_AUTHOR_EMAIL": "release@example.com",
        "DD_GIT_REPOSITORY_URL": "https://bot:pw@mirror.example.com/engine.git",
    }
    git = event(env, cwd)["git"]
    assert (
        "https://mirror.example.com/engine.git",
        "release/1.x",
        None,
        "release@example.com",
        AUTHOR[0],
    ) == (
        git["repository_url"],
        git["branch"],
        git.get("tag"),
        git["author_email"],
        git["author_name"],
    )
    flagged = event(env, cwd, overrides=Overrides(git_tag="v9", git_repository_url=REPO_URL))
    assert (REPO_URL, None, "v9") == (
        flagged["git"]["repository_url"],
        flagged["git"].get("branch"),
        flagged["git"]["tag"],
    )


def test_checkout_of_another_commit_lends_no_author(checkout: tuple[Path, str]) -> None:
    """A provider commit the checkout does not hold gets no author from the checkout HEAD."""
    cwd, _ = checkout
    env = {
        "CIRCLECI": "true",
        "CIRCLE_WORKFLOW_ID": "w",
        "CIRCLE_PROJECT_REPONAME": "engine",
        "CIRCLE_SHA1": "b" * 40,
        "CIRCLE_BRANCH": "main",
        "CIRCLE_REPOSITORY_URL": REPO_URL,
    }
    facts = resolve(env, Overrides(), cwd)
    assert ("b" * 40, None, None) == (
        facts.git.sha,
        facts.git.author_email,
        facts.git.message,
    )


def test_detection_order_prefers_a_provider_over_a_stray_jenkins_url(tmp_path: Path) -> None:
    """A GitHub job on a host that exports JENKINS_URL is still a GitHub job."""
    env = {"JENKINS_URL": "https://jenkins.example.com/", "GITHUB_ACTIONS": "true"}
    assert "github" == resolve(env, Overrides(), tmp_path).provider
    assert "generic" == resolve({}, Overrides(), tmp_path).provider
    assert "jenkins" == resolve(env, Overrides(provider="jenkins"), tmp_path).provider


def test_the_provider_flag_offers_every_provider() -> None:
    """--provider accepts exactly the providers detection knows, and generic."""
    assert sorted(providers.NAMES) == sorted(PROVIDER_NAMES)
