"""``ci-relay health``: the container health check, asking the configured relay over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ServerSettings
from relay.ops.healthcheck import probe_url
from relay.testing.process import RelayProcess, write_config
from tests.helpers import ci_relay, closed_port


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": port},
        outbox={"path": str(tmp_path / "outbox.db")},
    )


async def test_health_and_ready_pass_against_the_relay_the_config_names(tmp_path: Path) -> None:
    """With the config serve runs with, health and health --ready exit 0 with the probe's body."""
    config = _config(tmp_path, closed_port())
    async with RelayProcess(config) as relay:
        health = await ci_relay("health", "--config", str(config))
        ready = await ci_relay("health", "--ready", "--config", str(config))
        assert 0 == await relay.terminate()
    assert (0, 0) == (health.status, ready.status), health.stderr + ready.stderr
    assert f"http://127.0.0.1:{relay.port}/health: 200 " in health.stdout
    assert f"http://127.0.0.1:{relay.port}/ready: 200 " in ready.stdout
    assert '"outbox_limits": "ok"' in ready.stdout


async def test_health_follows_the_port_set_in_the_environment(tmp_path: Path) -> None:
    """CI_RELAY_SERVER__PORT moves the probe as it moves serve: the file's port alone fails."""
    nothing_there = closed_port()
    config = _config(tmp_path, nothing_there)
    moved = {"CI_RELAY_SERVER__PORT": str(closed_port())}
    async with RelayProcess(config, env=moved) as relay:
        followed = await ci_relay("health", "--config", str(config), env=moved)
        file_only = await ci_relay("health", "--config", str(config))
        assert 0 == await relay.terminate()
    assert (0, 1) == (followed.status, file_only.status), followed.stderr
    assert f"http://127.0.0.1:{nothing_there}/health: no answer: " in file_only.stderr


async def test_health_with_a_port_chosen_at_start_is_a_usage_error(tmp_path: Path) -> None:
    """Port 0 names no address to ask: exit 2 with one line."""
    result = await ci_relay("health", "--config", str(_config(tmp_path, 0)))
    assert (2, 1) == (result.status, len(result.stderr.splitlines())), result.stderr
    assert "server.port is 0" in result.stderr


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "http://127.0.0.1:8780/ready"),  # noqa: S104
        ("::", "http://[::1]:8780/ready"),
        ("127.0.0.2", "http://127.0.0.2:8780/ready"),
        ("::1", "http://[::1]:8780/ready"),
        ("localhost", "http://localhost:8780/ready"),
    ],
)
def test_a_relay_on_every_address_is_asked_on_loopback(host: str, expected: str) -> None:
    """A wildcard listen address is probed on the loopback address of its family."""
    assert expected == probe_url(ServerSettings(host=host, port=8780), "/ready")
