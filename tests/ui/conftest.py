"""Fixtures of the page's tests: a real relay (``ci-relay serve``, a real outbox) and a real
headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from selenium import webdriver

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import request
from tests.helpers import JSON
from tests.ui.browser import chromium


@dataclass
class Relay:
    """A started relay, a client session to it, and the headers its ingest needs."""

    process: RelayProcess
    client: aiohttp.ClientSession
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.process.port}"

    async def post(self, events: list[dict[str, Any]]) -> None:
        """Post the events as one request; the relay must take them (202)."""
        body = orjson.dumps(request(*events))
        async with self.client.post(self.process.url, data=body, headers=self.headers) as answer:
            assert 202 == answer.status, await answer.text()


def relay_config(tmp_path: Path, **server: Any) -> Path:
    """A relay's config: any free port, an outbox in ``tmp_path``, quick settling."""
    return write_config(
        tmp_path / "relay.toml",
        server={"port": 0, **server},
        outbox={"path": str(tmp_path / "outbox.db")},
        flusher={"flush_interval_s": 0.05},
    )


@pytest.fixture
async def dry_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """``ci-relay serve --dry-run``: events kept and shown, nothing sent, no token."""
    config = relay_config(tmp_path)
    async with (
        RelayProcess(config, arguments=("--dry-run",)) as process,
        aiohttp.ClientSession() as client,
    ):
        yield Relay(process, client)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with an empty profile, quit after the test."""
    with chromium(tmp_path / "profile") as driver:
        yield driver
