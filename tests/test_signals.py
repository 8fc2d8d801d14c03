"""Signals of the running daemon other than the stop signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from relay.testing.process import RelayProcess, write_config


async def _logged(relay: RelayProcess, name: str) -> None:
    # No event announces a log line: poll, bounded by the caller's timeout.
    for _ in range(1000):
        if relay.events(name):
            return
        await asyncio.sleep(0.02)


async def test_sighup_is_logged_and_the_relay_keeps_serving(tmp_path: Path) -> None:
    """SIGHUP is logged and does not stop the relay, which later stops cleanly on SIGTERM."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
    )
    async with RelayProcess(config) as relay:
        await relay.signal(signal.SIGHUP)
        logged = asyncio.create_task(_logged(relay, "SIGHUP received"))
        exited = asyncio.create_task(relay.wait())
        await asyncio.wait({logged, exited}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        assert (True, False) == (logged.done(), exited.done() and not exited.cancelled())
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{relay.port}/health") as resp,
        ):
            assert 200 == resp.status
        assert 0 == await relay.terminate()
    assert 1 == len(relay.events("SIGHUP received"))
    assert ["signal"] == [line["reason"] for line in relay.events("stopping")]


async def test_sighup_with_the_config_path_now_a_directory_says_so(tmp_path: Path) -> None:
    """SIGHUP after the config file was replaced by a directory warns that the path is a
    directory, not a file (not "not found"), and the relay stays up until SIGTERM."""
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
    )
    async with RelayProcess(config) as relay:
        config.rename(tmp_path / "relay.toml.old")
        config.mkdir()
        await relay.signal(signal.SIGHUP)
        await asyncio.wait_for(_logged(relay, "SIGHUP received"), timeout=10)
        assert 0 == await relay.terminate()
    (warning,) = relay.events("SIGHUP: configuration not read again; the log level stays")
    assert f"config file {config}: is a directory, not a file" == warning["error"]
