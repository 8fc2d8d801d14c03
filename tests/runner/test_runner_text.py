"""A byte that is not UTF-8 in a CI variable or a flag costs that field, not the report."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from relay.testing.samples import ago
from tests.helpers import RunningRelay
from tests.helpers import relay_command as ci_relay
from tests.runner.test_emit import github, stored

# How Python hands a child's environment the byte 0xff: a surrogate escape, which the
# subprocess encodes back to the byte itself (os.fsencode); the child sees b"CI \xff nightly".
NOT_UTF8 = b"CI \xff nightly".decode("utf-8", "surrogateescape")
REPLACED = "CI \ufffd nightly"
SECRET = b"token-\xff-secret".decode("utf-8", "surrogateescape")


def not_utf8(command: str, source: str) -> str:
    """The warning for a value that is not UTF-8, naming its source only."""
    return (
        f"ci-relay: {command}: {source} is not valid UTF-8; its invalid bytes were replaced "
        "with U+FFFD"
    )


async def test_run_reports_a_job_whose_variable_is_not_utf8(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A CI variable holding the byte 0xff is reported with U+FFFD in its place, with one
    warning naming the variable; the rest of the job is reported as usual."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url) | {"GITHUB_WORKFLOW": NOT_UTF8}
    done = await ci_relay("run", "--", "true", env=env, cwd=cwd)
    assert (0, b"", [not_utf8("run", "GITHUB_WORKFLOW")]) == (
        done.returncode,
        done.stdout,
        done.stderr.decode().splitlines(),
    )
    [job] = await stored(relay)
    assert (REPLACED, "test", sha) == (job["pipeline_name"], job["name"], job["git"]["sha"])


async def test_emit_replaces_bytes_that_are_not_utf8_in_variables_and_flags(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """emit builds the event with U+FFFD for each byte that is not UTF-8, in a variable or a
    flag, and names each source once."""
    cwd, sha = checkout
    env = github(tmp_path, sha, DD_GIT_COMMIT_MESSAGE=NOT_UTF8)
    done = await ci_relay(
        "emit", "job", "--status", "success", "--start", ago(seconds=5), "--dry-run",
        "--tag", f"suite:{NOT_UTF8}", env=env, cwd=cwd,
    )  # fmt: skip
    resource = orjson.loads(done.stdout)["data"]["attributes"]["resource"]
    assert (0, REPLACED, [f"suite:{REPLACED}"]) == (
        done.returncode,
        resource["git"]["message"],
        resource["tags"],
    )
    assert sorted([not_utf8("emit", "--tag"), not_utf8("emit", "DD_GIT_COMMIT_MESSAGE")]) == (
        sorted(done.stderr.decode().splitlines())
    )


async def test_run_names_a_command_line_that_is_not_utf8(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A step named after a command line holding a byte that is not UTF-8 is reported with
    U+FFFD in its name; the command itself gets its argument's bytes untouched."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url)
    done = await ci_relay(
        "run", "--level", "step", "--", "printf", "%s", NOT_UTF8, env=env, cwd=cwd
    )
    assert (0, b"CI \xff nightly", [not_utf8("run", "the command line")]) == (
        done.returncode,
        done.stdout,
        done.stderr.decode().splitlines(),
    )
    [step] = await stored(relay)
    assert f"printf %s '{REPLACED}'" == step["name"]


@pytest.mark.parametrize(
    ("args", "status"),
    [(["run", "--", "true"], 0), (["emit", "job", "--status", "success"], 2)],
    ids=["run", "emit"],
)
async def test_a_token_that_is_not_ascii_is_named_never_shown(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path, args: list[str], status: int
) -> None:
    """An ingest token that cannot be sent in a header stops the post with lines naming
    CI_RELAY_TOKEN and never showing it; run keeps the command's status, emit exits 2."""
    cwd, sha = checkout
    env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url, CI_RELAY_TOKEN=SECRET)
    start = ["--start", ago(seconds=5)] if args[0] == "emit" else []
    done = await ci_relay(*args, *start, env=env, cwd=cwd)
    command = args[0]
    refused = "CI_RELAY_TOKEN holds a character that cannot be sent (printable ASCII only)"
    reason = f"the job was not reported: {refused}" if command == "run" else refused
    assert (status, []) == (done.returncode, await stored(relay))
    assert sorted([not_utf8(command, "CI_RELAY_TOKEN"), f"ci-relay: {command}: {reason}"]) == (
        sorted(done.stderr.decode().splitlines())
    )
