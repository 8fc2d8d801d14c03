"""SIGKILL in every phase of the relay's work, the upstream failing at random, seeded.

Rounds of one real relay process on one outbox file, each ended by SIGKILL: during ingest
commits, during a flush (a batch in flight), during the bisection of a 400 batch and during
a dead-letter replay run beside it. The intake fails at random (503 or a dropped connection)
and refuses every "poison" event with 400. After a last clean round, every event answered 202
has reached the intake at least once, or sits in the dead letters with its reason.

The seed is printed with the tallies; ``CRASH_SEED=<n>`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import event, request
from tests.fake_intake import Drop, FakeIntake, Received, RejectEvents, Reply, Slow, Status
from tests.helpers import API_KEY, JSON, event_id

PHASES = ("ingest", "flush", "bisect", "replay")
ROUNDS_PER_PHASE = 2
FAILURE_RATE = 0.25  # of upstream requests answered 503 or dropped
POISON_RATE = 0.05  # of events the intake refuses with 400
REQUESTS_PER_ROUND = 60
WORKERS = 8
TIMEOUT_S = 30.0
POLL_S = 0.05
FLUSH_DELAY_S = 0.3  # each answer held back in the flush rounds, so kills land mid-request


def is_poison(item: dict[str, Any]) -> bool:
    return str(item["attributes"]["resource"]["name"]).startswith("poison")


@dataclass
class Unreliable:
    """Fails a request at random (503, or the connection dropped), else refuses poison with 400
    and accepts the rest; ``delay_s`` holds each answer back, so a kill can land mid-request."""

    rng: random.Random
    delay_s: float = 0.0
    reject = RejectEvents(is_poison)

    def __call__(self, received: Received) -> Reply:
        if self.rng.random() < FAILURE_RATE:
            failure = Drop() if self.rng.random() < 0.3 else Status(503)
            return Slow(self.delay_s, failure)(received)
        return Slow(self.delay_s, self.reject)(received)


@dataclass
class Tally:
    """What the runners sent and were answered, across every round."""

    rng: random.Random
    sent: int = 0
    accepted: set[str] = field(default_factory=set)
    poison: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0  # requests cut by a kill

    def body(self, size: int = 0, poison_at: int = -1) -> tuple[list[str], bytes]:
        """A request of ``size`` events (1 to 5 at random by default), the event at
        ``poison_at`` poison, any other with probability POISON_RATE."""
        items = []
        for i in range(size or self.rng.randint(1, 5)):
            n = self.sent
            self.sent += 1
            poison = i == poison_at or self.rng.random() < POISON_RATE
            items.append(
                event("job", id=f"ev-{n:06d}", name=f"{'poison' if poison else 'job'}-{n}")
            )
        return [event_id(i) for i in items], orjson.dumps(request(*items))

    async def load(
        self, url: str, requests: int, first: tuple[list[str], bytes] | None = None
    ) -> None:
        """Post ``first`` then ``requests`` bodies from WORKERS tasks; a worker ends at its
        first transport error (the relay is gone)."""
        bodies = [self.body() for _ in range(requests)] + ([first] if first else [])
        poison = {event_id(item) for _, body in bodies for item in _items(body) if is_poison(item)}

        async def worker(client: aiohttp.ClientSession) -> None:
            while bodies:
                ids, body = bodies.pop()
                try:
                    async with client.post(url, data=body, headers=JSON) as resp:
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    self.unanswered += 1
                    return
                self.statuses[resp.status] += 1
                if resp.status == 202:
                    self.accepted.update(ids)
                    self.poison.update(poison & set(ids))

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            await asyncio.gather(*(worker(client) for _ in range(WORKERS)))


def _items(body: bytes) -> list[dict[str, Any]]:
    data = orjson.loads(body)["data"]
    return data if isinstance(data, list) else [data]


def the_seed() -> int:
    given = os.environ.get("CRASH_SEED")
    return int(given) if given else random.randrange(2**32)


def outbox_rows(db: Path) -> tuple[int, dict[str, str]]:
    """The pending events, and each dead letter's event id with its reason."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        (pending,) = conn.execute("SELECT count(*) FROM events").fetchone()
        dead = {
            event_id(orjson.loads(body)): reason
            for body, reason in conn.execute("SELECT body, reason FROM dead_letters")
        }
    return int(pending), dead


async def until(condition: Callable[[], bool], what: str, poll_s: float = POLL_S) -> None:
    """Poll ``condition`` (facts in another process announce nothing) for up to TIMEOUT_S."""
    for _ in range(int(TIMEOUT_S / poll_s)):
        if condition():
            return
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")


@pytest.fixture
async def intake() -> AsyncIterator[FakeIntake]:
    """An intake whose answers each round sets."""
    async with FakeIntake() as fake:
        yield fake


async def replay_beside(config: Path) -> asyncio.subprocess.Process:
    """``ci-relay dead-letters replay --all`` started beside the relay, in the relay's
    environment (none of the machine's DD_ or CI_RELAY_ variables)."""
    # By hand: the test polls and may SIGKILL the command while it runs, which neither
    # RelayProcess (a serve, waited for until it listens) nor relay_command (run to its end)
    # allows.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "dead-letters",
        "replay",
        "--all",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=relay_free_env(),
    )


async def kill_in(
    phase: str, relay: RelayProcess, intake: FakeIntake, tally: Tally, db: Path
) -> None:
    """Set the phase up, then SIGKILL the relay at a random moment inside it."""
    rng = tally.rng
    if phase == "ingest":
        traffic = asyncio.create_task(tally.load(relay.url, 2 * REQUESTS_PER_ROUND))
        target = tally.statuses[202] + rng.randint(5, REQUESTS_PER_ROUND)
        await until(lambda: tally.statuses[202] >= target or traffic.done(), "202s")
        await asyncio.sleep(rng.uniform(0, 0.02))
        assert -9 == await relay.kill()
        await asyncio.wait_for(traffic, TIMEOUT_S)
        return
    first = tally.body(10, poison_at=rng.randrange(10)) if phase == "bisect" else None
    await tally.load(relay.url, REQUESTS_PER_ROUND // 3, first)
    if phase == "flush" and rng.random() < 0.5:
        # While a batch waits for its answer.
        await intake.wait_for_arrivals(intake.arrived + rng.randint(1, 3), TIMEOUT_S)
        await asyncio.sleep(rng.uniform(0, FLUSH_DELAY_S))
    elif phase == "flush":
        # Just after an answer, while the relay acknowledges the batch in its outbox.
        await intake.wait_for_requests(len(intake.received) + rng.randint(1, 3), TIMEOUT_S)
        await asyncio.sleep(rng.uniform(0, 0.005))
    elif phase == "bisect":
        refused = sum(r.answered == 400 for r in intake.received)
        await until(
            lambda: (
                sum(r.answered == 400 for r in intake.received) > refused or not outbox_rows(db)[0]
            ),
            "a 400 batch",
        )
        await intake.wait_for_arrivals(intake.arrived + rng.randint(0, 2), TIMEOUT_S)
    elif phase == "replay":
        dead = len(outbox_rows(db)[1])
        replay = await replay_beside(relay.config)
        # Once its first chunk is in, while it pauses before the next.
        await until(
            lambda: len(outbox_rows(db)[1]) < dead or replay.returncode is not None,
            "the replay's first chunk",
            poll_s=0.005,
        )
        if rng.random() < 0.5 and replay.returncode is None:
            os.kill(replay.pid, signal.SIGKILL)
            tally.kills["replay command"] += 1
        await asyncio.wait_for(replay.wait(), TIMEOUT_S)
    assert -9 == await relay.kill()


async def test_sigkill_in_every_phase_loses_no_accepted_event(
    tmp_path: Path, intake: FakeIntake
) -> None:
    """Kills during ingest, a flush, a bisection and a replay, the upstream failing at random:
    every 202 ends delivered at least once or dead-lettered with its reason."""
    seed = the_seed()
    tally = Tally(random.Random(seed))
    db = tmp_path / "outbox.db"
    config = write_config(
        tmp_path / "relay.toml",
        server={"port": 0},
        outbox={"path": str(db)},
        upstream={"url": intake.url, "api_key": API_KEY},
        flusher={"flush_interval_s": 0.05, "batch_max_events": 40, "shutdown_grace_s": 5.0},
        retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.1},
    )
    for phase in [p for p in PHASES for _ in range(ROUNDS_PER_PHASE)]:
        delay = FLUSH_DELAY_S if phase == "flush" else 0.0
        intake.default = Unreliable(random.Random(tally.rng.random()), delay_s=delay)
        async with RelayProcess(config) as relay:
            await kill_in(phase, relay, intake, tally, db)
        tally.kills[phase] += 1

    # A last round, the upstream reliable: the relay drains what every kill left.
    intake.default = RejectEvents(is_poison)
    async with RelayProcess(config) as relay:
        await until(lambda: outbox_rows(db)[0] == 0, "the outbox to drain")
        assert 0 == await relay.terminate()

    delivered = Counter(event_id(e) for e in intake.accepted_events)
    _, dead = outbox_rows(db)
    lost = tally.accepted - set(delivered) - set(dead)
    duplicates = sum(delivered.values()) - len(delivered)
    report = (
        f"seed {seed}: sent {tally.sent}, accepted {len(tally.accepted)}, "
        f"delivered {len(set(delivered) & tally.accepted)}, duplicates {duplicates}, "
        f"dead letters {Counter(dead.values())}, kills {dict(tally.kills)}, "
        f"answers {dict(tally.statuses)}, requests cut by a kill {tally.unanswered}"
    )
    print(report)
    assert set() == lost, report
    assert set() == tally.accepted - tally.poison - set(delivered), report
    assert dict.fromkeys(tally.poison, "rejected") == {
        event: dead.get(event) for event in tally.poison
    }, report
    assert all(tally.kills[phase] == ROUNDS_PER_PHASE for phase in PHASES), report
    assert tally.unanswered > 0, f"no kill landed with requests in flight: {report}"
