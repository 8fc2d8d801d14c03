"""Fixtures: a relay served over real HTTP on 127.0.0.1 with a real SQLite outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from relay.config import OutboxSettings
from relay.intake import PIPELINE_PATH
from relay.outbox import Outbox
from relay.server import app_runner, create_app
from tests.delivery_rig import Rig
from tests.fake_intake import FakeIntake


@dataclass
class RunningRelay:
    """An in-process relay: its URL, its outbox, and a client session to talk to it."""

    base_url: str
    outbox: Outbox
    client: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.base_url + PIPELINE_PATH


async def start_relay(
    settings: OutboxSettings, max_body_bytes: int = 5 * 1024 * 1024
) -> tuple[web.AppRunner, Outbox, str]:
    outbox = await Outbox.open(settings)
    web_runner = app_runner(create_app(outbox, max_body_bytes, retry_after_s=7))
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    host, port = web_runner.addresses[0][:2]
    return web_runner, outbox, f"http://{host}:{port}"


@pytest.fixture
def outbox_settings(tmp_path: Path) -> OutboxSettings:
    return OutboxSettings(path=tmp_path / "outbox.db")


@pytest.fixture
async def relay(outbox_settings: OutboxSettings) -> AsyncIterator[RunningRelay]:
    web_runner, outbox, base_url = await start_relay(outbox_settings)
    async with aiohttp.ClientSession() as client:
        yield RunningRelay(base_url, outbox, client)
    await web_runner.cleanup()
    await outbox.close()


@pytest.fixture
async def intake() -> AsyncIterator[FakeIntake]:
    """A started intake answering 202 by default, closed after the test."""
    async with FakeIntake() as fake:
        yield fake


@pytest.fixture
async def rig(intake: FakeIntake, tmp_path: Path) -> AsyncIterator[Rig]:
    """The rig; its upstream clients and (current) outbox are closed before the intake."""
    db = tmp_path / "outbox.db"
    setup = Rig(intake, await Outbox.open(OutboxSettings(path=db)), db)
    yield setup
    for client in setup.upstreams:
        await client.close()
    await setup.outbox.close()
