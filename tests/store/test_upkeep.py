"""The outbox's upkeep (relay.store.upkeep): webhook keys pruned, and a window cut short said."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from structlog.testing import capture_logs

from relay.config import HistorySettings, OutboxSettings, WebhookSettings
from relay.store.once import Keyed, Stored
from relay.store.outbox import Outbox
from relay.store.upkeep import prune_once, upkeep


@pytest.fixture
async def outbox(outbox_settings: OutboxSettings) -> AsyncIterator[Outbox]:
    opened = await Outbox.open(outbox_settings)
    yield opened
    await opened.close()


def keyed(key: str) -> Keyed:
    return Keyed(key, orjson.dumps({"key": key}), None)


async def test_a_bound_that_cuts_the_window_below_a_day_is_warned_about(outbox: Outbox) -> None:
    """Keys pruned by the bound while younger than 24 hours: one warning with the window and
    the setting to raise."""
    for number in range(3):
        await outbox.append_once(f"gitlab:delivery:{number}", [keyed(f"job:{number}")])
        await asyncio.sleep(0.01)
    # The validated bound is at least 10,000 keys; a small one keeps the test small.
    settings = WebhookSettings.model_construct(dedup_keep_h=48.0, dedup_max_keys=2)
    with capture_logs() as logs:
        await prune_once(outbox, settings)
    (warning,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["hint"] == "raise webhooks.dedup_max_keys"
    assert warning["window_h"] < 24


async def test_keys_within_the_window_and_bound_are_kept_quietly(outbox: Outbox) -> None:
    """Nothing to prune: nothing deleted, nothing warned."""
    await outbox.append_once("gitlab:delivery:1", [keyed("job:1")])
    with capture_logs() as logs:
        await prune_once(outbox, WebhookSettings())
    assert [] == [entry for entry in logs if entry["log_level"] == "warning"]
    assert Stored(0, duplicate=True) == await outbox.append_once("gitlab:delivery:1", [])


async def test_a_closed_outbox_is_warned_about_and_the_loop_goes_on(
    outbox_settings: OutboxSettings,
) -> None:
    """Upkeep never stops the relay: a failed round is one warning, and the loop keeps going."""
    outbox = await Outbox.open(outbox_settings)
    await outbox.close()
    with capture_logs() as logs:
        loop = asyncio.create_task(
            upkeep(outbox, WebhookSettings(), HistorySettings(), interval_s=0.01)
        )
        await asyncio.sleep(0.1)
        assert not loop.done()
        loop.cancel()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) >= 2
    assert "webhook keys not pruned; trying again later" == warnings[0]["event"]
