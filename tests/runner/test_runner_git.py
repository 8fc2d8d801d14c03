"""Values from the environment or the flags never reach git as options."""

from __future__ import annotations

from pathlib import Path

import orjson

from relay.runner.gitinfo import Checkout
from relay.testing.samples import ago
from tests.helpers import RunningRelay
from tests.helpers import relay_command as ci_relay
from tests.runner.test_emit import github, stored

PRECIOUS = b"a file of the user's\n"


def victim(tmp_path: Path) -> Path:
    """A file of the user's that an option smuggled to git would overwrite."""
    path = tmp_path / "precious"
    path.write_bytes(PRECIOUS)
    return path


def sources(target: Path) -> list[tuple[list[str], dict[str, str], str]]:
    """The sha as an option, from each source: flag or DD_GIT_COMMIT_SHA; and its name."""
    value = f"--output={target}"
    return [
        ([f"--git-sha={value}"], {}, "--git-sha"),
        ([], {"DD_GIT_COMMIT_SHA": value}, "DD_GIT_COMMIT_SHA"),
    ]


async def test_emit_dry_run_never_passes_a_sha_to_git_as_an_option(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """A sha of `--output=FILE` is dropped with a warning naming its source, FILE is untouched,
    and the event takes the next source's sha."""
    cwd, sha = checkout
    target = victim(tmp_path)
    for flags, variables, source in sources(target):
        env = github(tmp_path, sha) | variables
        done = await ci_relay(
            "emit", "job", "--status", "success", "--start", ago(seconds=5), "--dry-run",
            *flags, env=env, cwd=cwd,
        )  # fmt: skip
        resource = orjson.loads(done.stdout)["data"]["attributes"]["resource"]
        assert (0, PRECIOUS, sha) == (done.returncode, target.read_bytes(), resource["git"]["sha"])
        assert (
            f"ci-relay: emit: {source} is not a commit sha (40 or 64 hex digits); ignored\n"
        ) == done.stderr.decode()


async def test_run_never_passes_a_sha_to_git_as_an_option(
    relay: RunningRelay, checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """run drops a sha that is an option, with one warning, and reports the job with the rest."""
    cwd, sha = checkout
    target = victim(tmp_path)
    for flags, variables, source in sources(target):
        env = github(tmp_path, sha, CI_RELAY_URL=relay.base_url) | variables
        done = await ci_relay("run", *flags, "--", "true", env=env, cwd=cwd)
        assert (0, b"", PRECIOUS) == (done.returncode, done.stdout, target.read_bytes())
        assert (
            f"ci-relay: run: {source} is not a commit sha (40 or 64 hex digits); ignored\n"
        ) == done.stderr.decode()
    assert [sha, sha] == [job["git"]["sha"] for job in await stored(relay)]


def test_a_revision_is_never_an_option_to_git_log(
    checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """Checkout.commit reads nothing for a revision that is not HEAD or a sha, and git never
    sees it as an option (no file written)."""
    cwd, _ = checkout
    target = tmp_path / "written"
    assert None is Checkout(cwd).commit(f"--output={target}")
    assert not target.exists()
