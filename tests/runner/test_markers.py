"""Start marks live in a directory private to the user; one that others could write is not
used, and no mark file is ever read or written through a symbolic link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from relay.testing.samples import ago
from tests.helpers import relay_command as ci_relay
from tests.runner.runner_cli import clean_env

START = ago(seconds=60)
PLANTED = ago(seconds=3600)
PRECIOUS = b"a file of the user's\n"
OTHER_UID = 65534  # nobody
STEP = ["emit", "step", "--name", "lint", "--pipeline-id", "p-1", "--pipeline-name", "nightly"]
FLAWS = ["other_owner", "open_mode", "symlink"]
PLACES = ["tmpdir", "marker_dir_variable"]
# What a finished step's dry run says when no start is found: no body, only the problem.
NO_START = [
    "ci-relay: emit: data.attributes.resource.start: Field required "
    "(give --start, or an earlier 'emit --status running')",
    "ci-relay: emit: no request body printed: the event is not valid",
]


def marks_env(tmp_path: Path, place: str) -> tuple[dict[str, str], Path]:
    """An environment whose marks go to ``$TMPDIR/ci-relay-<uid>-marks`` or to
    ``$CI_RELAY_MARKER_DIR``; and that directory."""
    env = clean_env(tmp_path, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    if place == "tmpdir":
        del env["CI_RELAY_MARKER_DIR"]
        return env, tmp_path / "tmp" / f"ci-relay-{os.getuid()}-marks"
    directory = tmp_path / "shared" / "marks"
    return env | {"CI_RELAY_MARKER_DIR": str(directory)}, directory


async def mark_name(tmp_path: Path) -> str:
    """The file name of the step's start mark, learnt from a private directory."""
    learn = tmp_path / "learn"
    env = clean_env(tmp_path, CI_RELAY_MARKER_DIR=str(learn))
    done = await ci_relay(*STEP, "--status", "running", "--start", START, env=env, cwd=tmp_path)
    assert 0 == done.returncode, done.stderr
    [mark] = list(learn.iterdir())
    return mark.name


def plant(directory: Path, flaw: str, tmp_path: Path) -> Path:
    """``directory`` made as another user could have made it before the job: owned by another
    uid, open to everyone (0777), or a symbolic link; returns where its entries really are."""
    if flaw == "symlink":
        real = tmp_path / "elsewhere"
        real.mkdir(mode=0o700)
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.symlink_to(real)
        return real
    directory.mkdir(parents=True)
    if flaw == "other_owner":
        directory.chmod(0o700)
        os.chown(directory, OTHER_UID, OTHER_UID)
    else:
        directory.chmod(0o777)
    return directory


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("flaw", FLAWS)
async def test_a_running_emit_never_writes_through_a_planted_directory(
    tmp_path: Path, flaw: str, place: str
) -> None:
    """A marks directory another user could write is refused with one warning: a symlink
    planted at the mark's temporary name does not lead the start into the user's file."""
    name = await mark_name(tmp_path)
    env, directory = marks_env(tmp_path, place)
    real = plant(directory, flaw, tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    (real / f"{name}.tmp").symlink_to(victim)
    done = await ci_relay(*STEP, "--status", "running", "--start", START, env=env, cwd=tmp_path)
    [warning] = done.stderr.decode().splitlines()
    assert (0, PRECIOUS) == (done.returncode, victim.read_bytes())
    assert warning.startswith(f"ci-relay: emit: start marks are not used: {directory} ")
    assert [f"{name}.tmp"] == sorted(p.name for p in real.iterdir())


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("flaw", FLAWS)
async def test_a_finished_emit_never_takes_a_planted_start(
    tmp_path: Path, flaw: str, place: str
) -> None:
    """A start planted in a marks directory another user could write is not used: the
    finished step has no start (and says so) rather than the planted one."""
    name = await mark_name(tmp_path)
    env, directory = marks_env(tmp_path, place)
    real = plant(directory, flaw, tmp_path)
    (real / name).write_text(PLANTED, encoding="utf-8")
    done = await ci_relay(*STEP, "--status", "success", "--dry-run", env=env, cwd=tmp_path)
    lines = done.stderr.decode().splitlines()
    assert (2, b"", NO_START) == (done.returncode, done.stdout, lines[1:])
    assert lines[0].startswith(f"ci-relay: emit: start marks are not used: {directory} ")
    assert 1 == sum("start marks are not used" in line for line in lines)


async def test_marks_are_kept_in_a_directory_only_the_user_can_open(tmp_path: Path) -> None:
    """The marks directory is created 0700, a mark 0600, and no temporary file is left."""
    env, directory = marks_env(tmp_path, "tmpdir")
    done = await ci_relay(*STEP, "--status", "running", "--start", START, env=env, cwd=tmp_path)
    [mark] = list(directory.iterdir())
    assert (0, 0o700, 0o600) == (
        done.returncode,
        stat.S_IMODE(directory.stat().st_mode),
        stat.S_IMODE(mark.stat().st_mode),
    )
    finished = await ci_relay(*STEP, "--status", "success", "--dry-run", env=env, cwd=tmp_path)
    resource = orjson.loads(finished.stdout)["data"]["attributes"]["resource"]
    assert (0, b"", START) == (finished.returncode, finished.stderr, resource["start"])


async def test_a_mark_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """A mark's name holding a symbolic link, even in the user's own directory, is not read
    through: the step gets no start from it, with one warning."""
    name = await mark_name(tmp_path)
    env, directory = marks_env(tmp_path, "tmpdir")
    directory.mkdir(mode=0o700)
    elsewhere = tmp_path / "planted-start"
    elsewhere.write_text(PLANTED, encoding="utf-8")
    (directory / name).symlink_to(elsewhere)
    done = await ci_relay(*STEP, "--status", "success", "--dry-run", env=env, cwd=tmp_path)
    lines = done.stderr.decode().splitlines()
    assert (2, b"", NO_START) == (done.returncode, done.stdout, lines[1:])
    assert lines[0].startswith(f"ci-relay: emit: start marks are not used: {directory / name}")
