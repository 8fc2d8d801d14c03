"""GET and HEAD /health (liveness) and /ready (readiness for runners) over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from relay.config import OutboxSettings
from relay.testing.samples import event, request
from tests.helpers import JSON, RunningRelay, serving, tmpfs


async def probe(relay: RunningRelay, path: str) -> tuple[int, dict[str, object]]:
    async with relay.client.get(relay.base_url + path) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_health_and_ready_pass_on_a_working_relay(relay: RunningRelay) -> None:
    """Both probes answer 200 with every check ok; HEAD answers the same status, no body."""
    for path in ("/health", "/ready"):
        status, body = await probe(relay, path)
        assert (200, "ok") == (status, body["status"])
        assert isinstance(body["checks"], dict)
        assert {"ok"} == set(body["checks"].values())
        async with relay.client.head(relay.base_url + path) as head:
            assert (200, b"") == (head.status, await head.read())


async def test_other_methods_on_the_probes_get_405_naming_get_and_head(
    relay: RunningRelay,
) -> None:
    """POST /ready is a 405 in Datadog's shape with Allow: GET, HEAD."""
    async with relay.client.post(relay.base_url + "/ready", data=b"{}", headers=JSON) as resp:
        assert (405, "GET, HEAD") == (resp.status, resp.headers["Allow"])


async def test_ready_fails_while_the_outbox_is_full_and_passes_once_it_drains(
    tmp_path: Path,
) -> None:
    """/ready is 503 naming outbox.max_events while full, 200 again after a delivery; /health
    stays 200 throughout."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", max_events=2)
    async with serving(settings) as relay:
        body = orjson.dumps(request(event("job"), event("job")))
        async with relay.client.post(relay.url, data=body, headers=JSON) as resp:
            assert 202 == resp.status
        status, answer = await probe(relay, "/ready")
        assert (503, "failing") == (status, answer["status"])
        checks = answer["checks"]
        assert isinstance(checks, dict)
        assert "outbox.max_events is 2" in checks["outbox_limits"]
        assert 200 == (await probe(relay, "/health"))[0]

        await relay.outbox.ack(await relay.outbox.next_batch(1000, 1 << 30))
        assert 200 == (await probe(relay, "/ready"))[0]


async def test_health_fails_once_the_outbox_writer_has_stopped(tmp_path: Path) -> None:
    """With the writer task gone, /health answers 503 naming it."""
    async with serving(OutboxSettings(path=tmp_path / "outbox.db")) as relay:
        await relay.outbox.close()
        status, answer = await probe(relay, "/health")
    assert (503, {"outbox_writer": "the outbox writer has stopped"}) == (status, answer["checks"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted after it."""
    with tmpfs(tmp_path / "disk", "size=4m") as where:
        yield where


async def test_ready_fails_while_the_outbox_disk_is_full(small_disk: Path) -> None:
    """With less than 1 MiB left on the outbox's disk /ready is 503 saying so; 200 once freed."""
    async with serving(OutboxSettings(path=small_disk / "outbox.db")) as relay:
        assert 200 == (await probe(relay, "/ready"))[0]
        filler = small_disk / "filler"
        stats = os.statvfs(small_disk)
        filler.write_bytes(bytes(stats.f_bavail * stats.f_frsize - 256 * 1024))
        status, answer = await probe(relay, "/ready")
        filler.unlink()
        assert 200 == (await probe(relay, "/ready"))[0]
    checks = answer["checks"]
    assert isinstance(checks, dict)
    assert 503 == status
    assert str(checks["disk"]).endswith("bytes free on the outbox's file system")
