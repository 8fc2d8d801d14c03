"""``ci-relay emit``: one event of the current run, checked at the runner, posted to the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from relay.config import OutboxSettings, ServerSettings
from relay.contract.local import DEFAULT_RELAY_URL
from relay.contract.schema import parse_request
from relay.keyfiles import KeyFile
from relay.testing.samples import ago
from tests.helpers import RunningRelay, serving
from tests.helpers import relay_command as ci_relay
from tests.runner.runner_cli import AUTHOR, clean_env, unused_url

RELAY_TOKEN = "runners-ingest-token"  # noqa: S105


def github(home: Path, sha: str, **extra: str) -> dict[str, str]:
    """A GitHub Actions job's environment (the variables GitHub documents)."""
    return clean_env(
        home,
        GITHUB_ACTIONS="true",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_REPOSITORY="acme/engine",
        GITHUB_RUN_ID="9876543210",
        GITHUB_RUN_ATTEMPT="1",
        GITHUB_RUN_NUMBER="42",
        GITHUB_WORKFLOW="CI",
        GITHUB_JOB="test",
        GITHUB_SHA=sha,
        GITHUB_REF="refs/heads/main",
        GITHUB_WORKSPACE="/home/runner/work/engine/engine",
        **extra,
    )


async def stored(relay: RunningRelay) -> list[dict[str, Any]]:
    """The resources of the events in the relay's outbox, oldest first."""
    batch = await relay.outbox.next_batch(1000, 1 << 30)
    return [orjson.loads(e.body)["attributes"]["resource"] for e in batch]


def test_default_relay_url_is_the_local_relay_default() -> None:
    """Without a flag or CI_RELAY_URL, emit posts to where `ci-relay serve` listens by default."""
    defaults = ServerSettings()
    assert f"http://{defaults.host}:{defaults.port}" == DEFAULT_RELAY_URL
    assert DEFAULT_RELAY_URL.startswith("http://127.0.0.1:")


async def test_dry_run_prints_a_valid_request_and_posts_nothing(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """--dry-run prints the request body as JSON on stdout, which the relay's schema accepts."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay(
        "emit", "job", "--status", "success", "--start", ago(seconds=90), "--dry-run",
        env=env, cwd=cwd,
    )  # fmt: skip
    assert (0, b"") == (done.returncode, done.stderr)
    parse_request(done.stdout)
    resource = orjson.loads(done.stdout)["data"]["attributes"]["resource"]
    assert ("job", "test", "success", AUTHOR[1]) == (
        resource["level"],
        resource["name"],
        resource["status"],
        resource["git"]["author_email"],
    )
    assert [] == await stored(relay)


async def test_dry_run_of_an_invalid_event_prints_its_problems_and_no_body(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A dry run of an event the relay would refuse (a GitHub job gives no start time) prints
    each problem with what gives the field, then one line saying no body is printed; stdout
    stays empty, so a script never takes an invalid body for one, and the status is 2."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay("emit", "job", "--status", "success", "--dry-run", env=env, cwd=cwd)
    assert (2, b"") == (done.returncode, done.stdout)
    assert [
        "ci-relay: emit: data.attributes.resource.start: Field required "
        "(give --start, or an earlier 'emit --status running')",
        "ci-relay: emit: no request body printed: the event is not valid",
    ] == done.stderr.decode().splitlines()
    assert [] == await stored(relay)


async def test_running_then_finished_job_share_ids_and_start(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A finished emit takes its start from the mark of the running emit, and the same ids."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    start = ago(seconds=30)
    running = await ci_relay(
        "emit", "job", "--status", "running", "--start", start, env=env, cwd=cwd
    )
    finished = await ci_relay(
        "emit", "job", "--status", "error", "--error-message", "3 tests failed",
        "--error-type", "tests", "--tag", "team:core", "--metric", "tests.failed:3",
        "--parameter", "PYTHON=3.11",
        env=env, cwd=cwd,
    )  # fmt: skip
    assert (0, b"", 0, b"") == (
        running.returncode,
        running.stderr,
        finished.returncode,
        finished.stderr,
    )
    first, second = await stored(relay)
    assert ("running", "error") == (first["status"], second["status"])
    assert (first["id"], first["pipeline_unique_id"], start) == (
        second["id"],
        second["pipeline_unique_id"],
        second["start"],
    )
    assert (
        {"message": "3 tests failed", "type": "tests"},
        ["team:core"],
        ["tests.failed:3"],
        {"PYTHON": "3.11"},
    ) == (second["error"], second["tags"], second["metrics"], second["parameters"])
    assert [] == list((tmp_path / "marks").iterdir())


async def test_stage_start_is_kept_until_the_stage_finishes(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A running stage is only marked (the intake takes finished stages); the finish posts it."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    start = ago(seconds=20)
    marked = await ci_relay(
        "emit", "stage", "--name", "build", "--status", "running", "--start", start,
        env=env, cwd=cwd,
    )  # fmt: skip
    assert (0, []) == (marked.returncode, await stored(relay))
    done = await ci_relay(
        "emit", "stage", "--name", "build", "--status", "success", env=env, cwd=cwd
    )
    assert (0, b"") == (done.returncode, done.stderr)
    [stage] = await stored(relay)
    assert ("stage", "build", start) == (stage["level"], stage["name"], stage["start"])


async def test_a_mistake_is_reported_by_field_path_and_nothing_is_posted(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """An event the relay would refuse is refused at the runner, each problem by its JSON path."""
    cwd, _ = checkout
    env = clean_env(tmp_path, CI_RELAY_URL=relay.base_url)
    done = await ci_relay(
        "emit", "pipeline", "--status", "success", "--start", ago(seconds=5),
        "--pipeline-id", "p-1", "--name", "nightly", "--metric", "speed:fast",
        env=env, cwd=cwd,
    )  # fmt: skip
    lines = done.stderr.decode().splitlines()
    assert 2 == done.returncode
    assert [
        "ci-relay: emit: data.attributes.resource.metrics[0]: must follow the key:value pattern "
        'with a numeric value (got "speed:fast")',
        "ci-relay: emit: data.attributes.resource.url: Field required "
        "(give --url (--pipeline-url for a pipeline))",
    ] == sorted(lines)
    assert [] == await stored(relay)


async def test_an_unreachable_relay_is_one_line_and_status_1(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """When nothing answers at the relay's address, emit says so in one line and exits 1."""
    cwd, sha = checkout
    url = unused_url()
    env = github(tmp_path, sha)
    done = await ci_relay(
        "emit", "job", "--status", "success", "--start", ago(seconds=5), "--relay-url", url,
        env=env, cwd=cwd,
    )  # fmt: skip
    [line] = done.stderr.decode().splitlines()
    assert (1, b"") == (done.returncode, done.stdout)
    assert line.startswith(f"ci-relay: emit: cannot reach the relay at {url}/api/v2/ci/pipeline")


@pytest.fixture
async def guarded_relay(outbox_settings: OutboxSettings) -> AsyncIterator[RunningRelay]:
    """The relay's HTTP API requiring the ingest token RELAY_TOKEN."""
    token = KeyFile("server.ingest_token", SecretStr(RELAY_TOKEN), None)
    async with serving(outbox_settings, ingest_token=token) as running:
        yield running


@pytest.mark.parametrize(
    "command",
    [
        ["emit", "job", "--status", "success", "--start", ago(seconds=5)],
        ["run", "--", "true"],
    ],
    ids=["emit", "run"],
)
async def test_the_token_of_ci_relay_token_reaches_a_relay_that_requires_one(
    guarded_relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path, command: list[str]
) -> None:
    """With $CI_RELAY_TOKEN set, emit and run send it and the relay stores the event; without
    it the relay refuses the post (403), which the command reports on stderr."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=guarded_relay.base_url)
    refused = await ci_relay(*command, env=env, cwd=cwd)
    assert [] == await stored(guarded_relay)
    done = await ci_relay(*command, env=env | {"CI_RELAY_TOKEN": RELAY_TOKEN + "\n"}, cwd=cwd)
    assert ["test"] == [job["name"] for job in await stored(guarded_relay)]
    assert (0, b"") == (done.returncode, done.stderr)
    assert "answered 403" in refused.stderr.decode()
