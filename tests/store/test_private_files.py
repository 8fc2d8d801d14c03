"""What the relay creates for its outbox is its owner's only, whatever the umask it starts under.

The relay runs as a real subprocess started with the umask set (a container or a service
manager may start it with ``umask 000``): every directory it creates on the way to the
outbox is 0700, and the outbox, its -wal, -shm and lock file are 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.helpers import JSON

# 000: nothing masked (everyone could read and write); 277: even the owner's write masked.
UMASKS = [0o000, 0o277]


def with_umask(mask: int) -> Callable[[], None]:
    """A preexec_fn that starts the child under ``mask``."""

    def set_umask() -> None:
        os.umask(mask)

    return set_umask


def modes(*paths: Path) -> dict[str, str]:
    """Each path's permission bits, in octal, by name."""
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.parametrize("mask", UMASKS, ids=[f"umask-{m:03o}" for m in UMASKS])
async def test_outbox_directories_and_files_are_owner_only_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    """Under any umask, each directory serve creates for the outbox is 0700 and the outbox,
    its -wal, -shm and lock file are 0600."""
    outbox = tmp_path / "state" / "ci-relay" / "outbox.db"
    config = write_config(tmp_path / "relay.toml", server={"port": 0}, outbox={"path": str(outbox)})
    async with (
        RelayProcess(config, preexec_fn=with_umask(mask)) as relay,
        aiohttp.ClientSession() as client,
    ):
        body = orjson.dumps(request(event("job")))
        async with client.post(relay.url, data=body, headers=JSON) as resp:
            assert 202 == resp.status
        files = [outbox.with_name(outbox.name + s) for s in ("", "-wal", "-shm", ".lock")]
        found = modes(outbox.parent.parent, outbox.parent, *files)
        assert 0 == await relay.terminate()

    assert {
        "state": "0o700",
        "ci-relay": "0o700",
        "outbox.db": "0o600",
        "outbox.db-wal": "0o600",
        "outbox.db-shm": "0o600",
        "outbox.db.lock": "0o600",
    } == found
