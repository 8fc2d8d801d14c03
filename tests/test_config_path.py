"""``--config`` naming something other than a file: one line saying what the path is, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ci_relay

# One command per way of loading settings: all of them, only the outbox's, check-config's own.
COMMANDS = ["serve", "dead-letters list", "check-config"]


@pytest.mark.parametrize("command", COMMANDS)
async def test_config_option_naming_a_directory_says_it_is_a_directory(
    tmp_path: Path, command: str
) -> None:
    """``--config DIR`` is refused in one line saying the path is a directory, not a file."""
    directory = tmp_path / "relay.toml"
    directory.mkdir()

    ran = await ci_relay(*command.split(), "--config", str(directory))

    assert (2, "", [f"ci-relay: config file {directory}: is a directory, not a file"]) == (
        ran.status,
        ran.stdout,
        ran.stderr.splitlines(),
    )


async def test_config_option_naming_a_fifo_says_it_is_not_a_regular_file(tmp_path: Path) -> None:
    """``--config`` naming a named pipe is refused as not a regular file (never read, no hang)."""
    fifo = tmp_path / "relay.toml"
    os.mkfifo(fifo)

    ran = await ci_relay("serve", "--config", str(fifo))

    assert (2, [f"ci-relay: config file {fifo}: is not a regular file"]) == (
        ran.status,
        ran.stderr.splitlines(),
    )


async def test_config_option_naming_nothing_says_not_found(tmp_path: Path) -> None:
    """``--config`` naming a path where nothing exists is refused as not found."""
    missing = tmp_path / "relay.toml"

    ran = await ci_relay("check-config", "--config", str(missing))

    assert (2, [f"ci-relay: config file {missing}: not found"]) == (
        ran.status,
        ran.stderr.splitlines(),
    )
