"""Webhook deduplication in the outbox (relay.store.once): keys commit with their events."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from relay.config import OutboxSettings
from relay.store import deadletters
from relay.store.once import Keyed, Stored
from relay.store.outbox import Outbox
from relay.store.writer import OutboxFull
from relay.testing.samples import event


def item(key: str, refused: str | None = None) -> Keyed:
    """A webhook's event named ``key`` (its body says the key too)."""
    return Keyed(key, orjson.dumps(event("job") | {"key": key}), None, refused)


def stored_keys(path: Path) -> list[str]:
    """The keys in the events' bodies, in id order."""
    with closing(sqlite3.connect(path)) as db:
        return [orjson.loads(body)["key"] for (body,) in db.execute("SELECT body FROM events")]


def key_count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        ((count,),) = db.execute("SELECT count(*) FROM webhook_keys").fetchall()
    return int(count)


@pytest.fixture
async def outbox(outbox_settings: OutboxSettings) -> AsyncIterator[Outbox]:
    opened = await Outbox.open(outbox_settings)
    yield opened
    await opened.close()


async def test_a_delivery_is_stored_once(outbox: Outbox, outbox_settings: OutboxSettings) -> None:
    """The same delivery id again stores nothing, whatever its items."""
    first = await outbox.append_once("gitlab:delivery:1", [item("a"), item("b")])
    again = await outbox.append_once("gitlab:delivery:1", [item("c")])
    assert (Stored(2), Stored(0, duplicate=True)) == (first, again)
    assert ["a", "b"] == stored_keys(outbox_settings.path)
    assert (2, 2) == (outbox.counts.events, outbox.counts.accepted_total)


async def test_an_item_seen_before_is_not_stored_again(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """A new delivery announcing an object in a status stored before stores only the new."""
    await outbox.append_once("gitlab:delivery:1", [item("job:1:success")])
    second = await outbox.append_once(
        "gitlab:delivery:2", [item("job:1:success"), item("job:2:success"), item("job:2:success")]
    )
    assert Stored(1) == second
    assert ["job:1:success", "job:2:success"] == stored_keys(outbox_settings.path)
    assert 2 == outbox.counts.events


async def test_a_refused_item_becomes_an_invalid_dead_letter_once(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """An item the relay cannot send is a dead letter (reason invalid, its detail), counted,
    and a redelivery of it under a new id makes no second one."""
    refused = item("run:1:success", refused="end is older than 18 hours")
    first = await outbox.append_once("github:delivery:1", [refused, item("job:9:success")])
    second = await outbox.append_once("github:delivery:2", [refused])
    assert (Stored(1, dead_letters=1), Stored(0)) == (first, second)
    letters = await deadletters.list_dead_letters(outbox_settings.path)
    assert [("invalid", "end is older than 18 hours", refused.body)] == [
        (letter.reason, letter.detail, letter.body) for letter in letters
    ]
    assert ["job:9:success"] == stored_keys(outbox_settings.path)
    assert (1, 1) == (outbox.counts.events, outbox.counts.dead_lettered_total)


async def test_keys_of_a_refused_append_are_not_kept(tmp_path: Path) -> None:
    """A delivery refused for a full outbox keeps no key: sent again later, it is stored."""
    settings = OutboxSettings(path=tmp_path / "outbox.db", max_events=1)
    outbox = await Outbox.open(settings)
    try:
        await outbox.append_once("gitlab:delivery:0", [item("first")])
        with pytest.raises(OutboxFull):
            await outbox.append_once("gitlab:delivery:1", [item("second")])
        (pending,) = await outbox.next_batch(10, 1_000_000)
        await outbox.ack([pending])
        assert Stored(1) == await outbox.append_once("gitlab:delivery:1", [item("second")])
    finally:
        await outbox.close()
    assert ["second"] == stored_keys(settings.path)


async def test_keys_are_kept_for_their_window_then_pruned(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """Keys younger than the window stay; older ones go, and their objects store again."""
    await outbox.append_once("gitlab:delivery:1", [item("a")])
    kept = await outbox.prune_webhook_keys(keep_s=3600, max_keys=1000, now=time.time())
    assert (0, 2) == (kept.deleted, key_count(outbox_settings.path))
    pruned = await outbox.prune_webhook_keys(keep_s=3600, max_keys=1000, now=time.time() + 3601)
    assert (2, None) == (pruned.deleted, pruned.bound_age_s)
    assert Stored(1) == await outbox.append_once("gitlab:delivery:1", [item("a")])


async def test_keys_past_the_bound_go_oldest_first(
    outbox: Outbox, outbox_settings: OutboxSettings
) -> None:
    """Past max_keys, the oldest keys are deleted, and the window that leaves is reported."""
    for number in range(3):
        await outbox.append_once(f"gitlab:delivery:{number}", [item(f"job:{number}")])
        await asyncio.sleep(0.01)  # distinct seen_at per delivery
    pruned = await outbox.prune_webhook_keys(keep_s=3600, max_keys=4, now=time.time())
    assert 2 == pruned.deleted
    assert pruned.bound_age_s is not None
    assert 0 < pruned.bound_age_s < 60
    assert 4 == key_count(outbox_settings.path)
    # The oldest delivery's keys went: it would store again; the newest would not.
    assert Stored(0, duplicate=True) == await outbox.append_once("gitlab:delivery:2", [])
    assert Stored(1) == await outbox.append_once("gitlab:delivery:0", [item("job:0")])
