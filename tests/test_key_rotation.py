"""The upstream API key read from a file: rotated under a running relay, delivery resumes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request
from tests.fake_intake import FakeIntake, RequireKey
from tests.helpers import JSON, ci_relay, wait_until

GOOD_KEY = "good0123456789abcdef0123456789ab"
BAD_KEY = "bad00123456789abcdef0123456789ab"
PAUSED = "upstream refuses the API key; delivery paused"


def _secret_dir(root: Path, key: str) -> Path:
    """A key file laid out as Kubernetes mounts a Secret: ``key -> ..data/key``, with
    ``..data`` a symlink to a timestamped directory. Returns the path the relay reads."""
    root.mkdir()
    (root / "..2026_01").mkdir()
    (root / "..2026_01" / "key").write_text(key + "\n")
    (root / "..data").symlink_to("..2026_01")
    (root / "key").symlink_to("..data/key")
    return root / "key"


def _swap_secret(root: Path, key: str) -> None:
    """Update the Secret as the kubelet does: a new directory, then an atomic symlink swap."""
    (root / "..2026_02").mkdir()
    (root / "..2026_02" / "key").write_text(key + "\n")
    (root / "..data_tmp").symlink_to("..2026_02")
    (root / "..data_tmp").rename(root / "..data")


def _config(tmp_path: Path, intake: FakeIntake, key_file: Path, level: str = "info") -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": intake.url, "api_key_file": str(key_file)},
        # A probe only after 10 minutes: a resumed delivery within the test comes from the key.
        flusher={"flush_interval_s": 0.05, "unauthorized_probe_s": 600.0},
        log={"level": level},
    )


async def _post(client: aiohttp.ClientSession, relay: RelayProcess, name: str) -> int:
    body = orjson.dumps(request(event("job", id=name, name=name)))
    async with client.post(relay.url, data=body, headers=JSON) as resp:
        return resp.status


async def _read(client: aiohttp.ClientSession, relay: RelayProcess, path: str) -> str:
    async with client.get(f"http://127.0.0.1:{relay.port}{path}") as resp:
        return await resp.text()


def _names(intake: FakeIntake) -> list[str]:
    return [str(e["attributes"]["resource"]["name"]) for e in intake.accepted_events]


async def _paused(relay: RelayProcess) -> None:
    await wait_until(lambda: bool(relay.events(PAUSED)), 15, "delivery paused as unauthorized")


async def test_a_rotated_secret_resumes_delivery_at_once_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """Started with a refused key, the relay keeps events; once the mounted Secret is swapped
    for the accepted key, delivery resumes within seconds, long before the next probe."""
    async with FakeIntake(RequireKey(GOOD_KEY)) as intake, aiohttp.ClientSession() as client:
        root = tmp_path / "secret"
        config = _config(tmp_path, intake, _secret_dir(root, BAD_KEY))
        async with RelayProcess(config) as relay:
            accepted = [await _post(client, relay, f"job-{i}") for i in range(3)]
            await _paused(relay)
            _swap_secret(root, GOOD_KEY)
            await intake.wait_for_events(3, timeout_s=15)
            seen = [await _read(client, relay, p) for p in ("/status", "/metrics")]
            await relay.terminate()
        shown = await _check_config(config)
    keys = {r.headers["DD-API-KEY"] for r in intake.received}
    assert ([202] * 3, {"job-0", "job-1", "job-2"}) == (accepted, set(_names(intake)))
    assert {BAD_KEY, GOOD_KEY} == keys
    assert 1 == len(relay.events("delivery resumed"))
    _never_shown(relay.logs, *seen, shown)


async def test_sighup_reads_the_key_file_again(tmp_path: Path) -> None:
    """A key rewritten in place so that polling cannot see it (same inode, size and mtime) is
    read on SIGHUP, and delivery resumes."""
    async with FakeIntake(RequireKey(GOOD_KEY)) as intake, aiohttp.ClientSession() as client:
        key_file = tmp_path / "dd-api-key"
        key_file.write_text(BAD_KEY)
        config = _config(tmp_path, intake, key_file)
        async with RelayProcess(config) as relay:
            assert 202 == await _post(client, relay, "held")
            await _paused(relay)
            before = os.stat(key_file)
            with key_file.open("r+") as file:  # same inode and size
                file.write(GOOD_KEY)
            os.utime(key_file, ns=(before.st_atime_ns, before.st_mtime_ns))
            await asyncio.sleep(2.5)  # past a poll of the key file, which sees no change
            unchanged = len(intake.received)
            await relay.signal(signal.SIGHUP)
            await intake.wait_for_events(1, timeout_s=15)
            await relay.terminate()
    assert (1, ["held"]) == (unchanged, _names(intake))
    _never_shown(relay.logs)


async def test_sighup_reads_the_log_level_again(tmp_path: Path) -> None:
    """After the config file's log.level is changed to debug and SIGHUP sent, debug lines
    (one per batch sent) appear; before, none did."""
    async with FakeIntake(RequireKey(GOOD_KEY)) as intake, aiohttp.ClientSession() as client:
        key_file = tmp_path / "dd-api-key"
        key_file.write_text(GOOD_KEY)
        config = _config(tmp_path, intake, key_file)
        async with RelayProcess(config) as relay:
            assert 202 == await _post(client, relay, "before")
            await intake.wait_for_events(1, timeout_s=15)
            config.write_text(config.read_text().replace('level = "info"', 'level = "debug"'))
            await relay.signal(signal.SIGHUP)
            await wait_until(lambda: bool(relay.events("SIGHUP received")), 10, "SIGHUP logged")
            assert 202 == await _post(client, relay, "after")
            await intake.wait_for_events(2, timeout_s=15)
            await wait_until(lambda: bool(relay.events("batch sent")), 10, "a debug line")
            await relay.terminate()
    hangup = relay.events("SIGHUP received")[0]
    assert ("debug", 1) == (hangup["log_level"], len(relay.events("batch sent")))


def _never_shown(logs: list[dict[str, Any]], *texts: str) -> None:
    shown = orjson.dumps(logs).decode() + "".join(texts)
    assert (False, False) == (GOOD_KEY in shown, BAD_KEY in shown)


async def _check_config(config: Path) -> str:
    ran = await ci_relay("check-config", "--config", str(config))
    assert 0 == ran.status, ran
    return ran.stdout + ran.stderr
