"""Fixtures: a relay served over real HTTP on 127.0.0.1 with a real SQLite outbox, a fake intake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from relay.config import OutboxSettings
from relay.store.outbox import Outbox
from tests.delivery.delivery_rig import Rig
from tests.fake_intake import FakeIntake
from tests.helpers import RunningRelay, serving
from tests.runner.runner_cli import make_repo


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real git repository and the sha of its one commit (a job's working tree)."""
    path = tmp_path_factory.mktemp("checkout") / "engine"
    return path, make_repo(path)


@pytest.fixture
def outbox_settings(tmp_path: Path) -> OutboxSettings:
    """Outbox settings for a file in the test's temporary directory."""
    return OutboxSettings(path=tmp_path / "outbox.db")


@pytest.fixture
async def relay(outbox_settings: OutboxSettings) -> AsyncIterator[RunningRelay]:
    """The relay's HTTP API over that outbox, closed after the test."""
    async with serving(outbox_settings) as running:
        yield running


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


# Hypothesis profiles: "ci" (the default) keeps the stateful tests well under a minute, and
# reports a failure unshrunk (shrinking real SQLite steps outlasts the per-test timeout) with
# the blob that replays it; "long" (pytest --hypothesis-profile=long) searches much further
# and shrinks what it finds.
settings.register_profile(
    "ci",
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)
settings.register_profile(
    "long", max_examples=2000, stateful_step_count=100, deadline=None, print_blob=True
)
settings.load_profile("ci")
