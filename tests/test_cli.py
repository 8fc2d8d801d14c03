"""The command line: each command loads only the settings it uses; user errors end it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from relay.config import OutboxSettings
from relay.outbox import Outbox
from relay.process import write_config


def ci_relay(*args: str) -> subprocess.CompletedProcess[str]:
    """``ci-relay ARGS`` as a subprocess, outside any CI_RELAY_*/DD_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_RELAY_", "DD_"))}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_dead_letter_commands_ignore_a_bad_daemon_setting(tmp_path: Path) -> None:
    """A wrong server or upstream key stops serve, not the commands that only use the outbox."""
    outbox = tmp_path / "outbox.db"
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 99999},
        upstream={"url": "ftp://wrong.example"},
        outbox={"path": str(outbox)},
    )
    serve = ci_relay("serve", "--config", str(config))
    assert (2, 1) == (serve.returncode, len(serve.stderr.splitlines())), serve.stderr
    assert "server.port" in serve.stderr

    made = await Outbox.open(OutboxSettings(path=outbox))
    await made.close()
    check = ci_relay("outbox", "check", "--config", str(config))
    listing = ci_relay("dead-letters", "list", "--config", str(config))
    dry_run = ci_relay("dead-letters", "purge", "--all", "--dry-run", "--config", str(config))
    assert [0, 0, 0] == [r.returncode for r in (check, listing, dry_run)], (
        check.stderr + listing.stderr + dry_run.stderr
    )


def test_an_outbox_setting_error_still_stops_an_outbox_command(tmp_path: Path) -> None:
    """A wrong key in the outbox group is refused by the commands that use it, in one line."""
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(tmp_path / "o.db"), "x": 1})
    listing = ci_relay("dead-letters", "list", "--config", str(config))
    assert (2, 1) == (listing.returncode, len(listing.stderr.splitlines())), listing.stderr
    assert "outbox.x" in listing.stderr
