"""The command line: each command loads only the settings it uses; user errors end it."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import OutboxSettings
from relay.store.outbox import Outbox
from relay.testing.process import write_config
from tests.helpers import ci_relay, tmpfs

# A stand-in secret the tests look for where it must never appear.
SECRET = "check-config-secret"  # noqa: S105


async def test_dead_letter_commands_ignore_a_bad_daemon_setting(tmp_path: Path) -> None:
    """A wrong server or upstream key stops serve, not the commands that only use the outbox."""
    outbox = tmp_path / "outbox.db"
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 99999},
        upstream={"url": "ftp://wrong.example"},
        outbox={"path": str(outbox)},
    )
    serve = await ci_relay("serve", "--config", str(config))
    assert (2, 1) == (serve.status, len(serve.stderr.splitlines())), serve.stderr
    assert "server.port" in serve.stderr

    made = await Outbox.open(OutboxSettings(path=outbox))
    await made.close()
    check = await ci_relay("outbox", "check", "--config", str(config))
    listing = await ci_relay("dead-letters", "list", "--config", str(config))
    dry_run = await ci_relay("dead-letters", "purge", "--all", "--dry-run", "--config", str(config))
    assert [0, 0, 0] == [r.status for r in (check, listing, dry_run)], (
        check.stderr + listing.stderr + dry_run.stderr
    )


async def test_an_outbox_setting_error_still_stops_an_outbox_command(tmp_path: Path) -> None:
    """A wrong key in the outbox group is refused by the commands that use it, in one line."""
    config = write_config(tmp_path / "relay.toml", outbox={"path": str(tmp_path / "o.db"), "x": 1})
    listing = await ci_relay("dead-letters", "list", "--config", str(config))
    assert (2, 1) == (listing.status, len(listing.stderr.splitlines())), listing.stderr
    assert "outbox.x" in listing.stderr


async def test_check_config_shows_each_setting_with_its_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config prints every setting, where it came from, and never a secret."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 9000},
        outbox={"path": str(tmp_path / "state" / "outbox.db")},
        upstream={"url": f"https://relay:{SECRET}@proxy.example:8443"},
    )
    env = {"CI_RELAY_FLUSHER__FLUSH_INTERVAL_S": "2.5", "DD_API_KEY": SECRET}
    result = await ci_relay("check-config", "--config", str(config), env=env)

    assert (0, "") == (result.status, result.stderr), result.stderr
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()}
    assert lines["port"].endswith(f"# file {config}")
    assert lines["flush_interval_s"].endswith("# environment CI_RELAY_FLUSHER__FLUSH_INTERVAL_S")
    assert lines["api_key"].endswith("# environment DD_API_KEY")
    assert lines["max_events"].endswith("# default")
    assert '"set (redacted)"' in lines["api_key"]
    assert SECRET not in result.stdout
    assert "https://***@proxy.example:8443/api/v2/ci/pipeline" in result.stdout


async def test_check_config_lists_every_problem_one_line_each(tmp_path: Path) -> None:
    """Each invalid setting is one line on stderr, and the exit status is 2."""
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nport = 99999\n[upstream]\nurl = "ftp://x"\n', encoding="utf-8")
    result = await ci_relay("check-config", "--config", str(config))
    lines = result.stderr.splitlines()
    assert (2, 2) == (result.status, len(lines)), result.stderr
    assert ("server.port" in lines[0], "upstream.url" in lines[1]) == (True, True)


async def test_check_config_refuses_an_outbox_directory_it_cannot_write(tmp_path: Path) -> None:
    """An outbox under a read-only file system is one problem line and exit 2."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as where:
        config = write_config(tmp_path / "relay.toml", outbox={"path": str(where / "s" / "o.db")})
        result = await ci_relay("check-config", "--config", str(config))
    assert (2, 1) == (result.status, len(result.stderr.splitlines())), result.stderr
    assert f"outbox directory {where / 's'} cannot be created or written" in result.stderr
