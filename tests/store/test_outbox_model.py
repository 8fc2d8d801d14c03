"""The outbox against a plain in-memory model, by hypothesis's stateful testing.

Random sequences of appends (some refused as full), batches, acks, failures, dead letters of
every reason, replays, purges and restarts (clean, or from a crash image: the file and its
write-ahead log as a killed process leaves them) run on a real SQLite file. After every step
the file, the outbox's counts and the model agree: nothing lost, nothing duplicated,
delivery in receive order. ``--hypothesis-profile=long`` searches longer (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relay.config import OutboxSettings
from relay.contract.accepted import AcceptedEvent
from relay.store import deadletters
from relay.store.outbox import DEAD_LETTER_REASONS, DeadLetterReason, Outbox, StoredEvent
from relay.store.writer import OutboxFull

MAX_EVENTS = 40
MAX_BYTES = 4000
SIDECARS = ("-wal",)  # what a killed process leaves beside the file; -shm is rebuilt


@dataclass
class Pending:
    """The model of one pending event: its body, its end, and its failed attempts."""

    body: bytes
    end_at: float | None
    attempts: int = 0


@dataclass(frozen=True)
class Dead:
    """The model of one dead letter."""

    body: bytes
    reason: DeadLetterReason
    attempts: int
    end_at: float | None


@dataclass
class Model:
    """What the outbox must hold: pending events in receive order, dead letters in theirs."""

    pending: list[Pending] = field(default_factory=list)
    dead: list[Dead] = field(default_factory=list)

    def find(self, body: bytes) -> Pending:
        return next(p for p in self.pending if p.body == body)

    def remove(self, bodies: set[bytes]) -> list[Pending]:
        gone = [p for p in self.pending if p.body in bodies]
        self.pending = [p for p in self.pending if p.body not in bodies]
        return gone


def file_state(path: Path) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, str, int]]]:
    """The events (body, attempts) and dead letters (body, reason, attempts) in the file."""
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        events = [
            (bytes(b), a) for b, a in conn.execute("SELECT body, attempts FROM events ORDER BY id")
        ]
        dead = [
            (bytes(b), r, a)
            for b, r, a in conn.execute(
                "SELECT body, reason, attempts FROM dead_letters ORDER BY id"
            )
        ]
    return events, dead


class OutboxMachine(RuleBasedStateMachine):
    """Drives one real ``Outbox`` on one event loop the machine owns, beside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.generation = 0
        self.serial = 0
        self.now = 1_000_000.0
        self.model = Model()
        self.batch: list[StoredEvent] = []
        # Events and bytes a replay added that the outbox has not taken into its counts yet.
        self.unseen = (0, 0)
        self.outbox = self.runner.run(Outbox.open(self.settings()))

    @property
    def path(self) -> Path:
        return self.directory / f"gen{self.generation}" / "outbox.db"

    def settings(self) -> OutboxSettings:
        # NORMAL: what a step leaves in the file is the same; FULL's fsyncs would only slow the
        # search (the crash image copies what the process wrote, as a kill leaves it).
        return OutboxSettings(
            path=self.path, max_events=MAX_EVENTS, max_bytes=MAX_BYTES, synchronous="NORMAL"
        )

    def new_event(self, pad: int, ended: bool) -> AcceptedEvent:
        self.serial += 1
        body = b'{"n":%d,"pad":"%s"}' % (self.serial, b"x" * pad)
        return AcceptedEvent(body, float(self.serial) if ended else None)

    @rule(shape=st.lists(st.tuples(st.integers(0, 400), st.booleans()), min_size=1, max_size=8))
    def append(self, shape: list[tuple[int, bool]]) -> None:
        """One request of one or more events: all stored, or all refused when over a limit."""
        events = [self.new_event(pad, ended) for pad, ended in shape]
        # The limits apply to the counts the outbox holds, which a replay's events join later.
        count = len(self.model.pending) - self.unseen[0] + len(events)
        size = self.model_bytes() - self.unseen[1] + sum(len(e.body) for e in events)
        full = count > MAX_EVENTS or size > MAX_BYTES
        try:
            self.runner.run(self.outbox.append(events))
        except OutboxFull:
            assert full, "refused as full below both limits"
            return
        assert not full, "accepted past a limit"
        self.model.pending.extend(Pending(e.body, e.end_at) for e in events)

    @rule(
        max_events=st.integers(1, 12),
        max_bytes=st.integers(0, 2000),
        skip=st.sets(st.integers(0, 15), max_size=3),
    )
    def next_batch(self, max_events: int, max_bytes: int, skip: set[int]) -> None:
        """The oldest events but those excluded, within both limits, in receive order."""
        exclude = {self.batch[i].id for i in skip if i < len(self.batch)}
        excluded = {e.body for e in self.batch if e.id in exclude}
        batch = self.runner.run(self.outbox.next_batch(max_events, max_bytes, exclude))
        candidates = [p.body for p in self.model.pending if p.body not in excluded]
        assert candidates[: len(batch)] == [e.body for e in batch]
        assert (len(batch) > 0) == (len(candidates) > 0)
        wire = 11 + sum(e.size for e in batch) + max(0, len(batch) - 1)
        assert len(batch) <= max_events
        assert len(batch) <= 1 or wire <= max_bytes
        self.batch = batch

    def model_bytes(self) -> int:
        return sum(len(p.body) for p in self.model.pending)

    def chosen(self, picks: set[int]) -> list[StoredEvent]:
        """Events of the last batch taken (or of the oldest twelve, when none is held)."""
        if not self.batch:
            self.batch = self.runner.run(self.outbox.next_batch(12, 1 << 30))
        return [e for i, e in enumerate(self.batch) if i in picks] or self.batch[:1]

    def forget(self, events: list[StoredEvent]) -> None:
        gone = {e.id for e in events}
        self.batch = [e for e in self.batch if e.id not in gone]

    @rule(picks=st.sets(st.integers(0, 11), min_size=1))
    def ack(self, picks: set[int]) -> None:
        """Delivered events leave the outbox."""
        events = self.chosen(picks)
        self.runner.run(self.outbox.ack(events))
        self.unseen = (0, 0)  # every removal takes in what a replay added first
        self.model.remove({e.body for e in events})
        self.forget(events)

    @rule(picks=st.sets(st.integers(0, 11), min_size=1))
    def record_failure(self, picks: set[int]) -> None:
        """A failed attempt is counted on each event, which stays pending."""
        events = self.chosen(picks)
        self.now += 1
        self.runner.run(self.outbox.record_failure(events, self.now))
        for e in events:
            self.model.find(e.body).attempts += 1

    @rule(
        picks=st.sets(st.integers(0, 11), min_size=1), reason=st.sampled_from(DEAD_LETTER_REASONS)
    )
    def dead_letter(self, picks: set[int], reason: DeadLetterReason) -> None:
        """Events move to the dead letters with their reason; an expiry is not an attempt."""
        events = self.chosen(picks)
        self.now += 1
        status = None if reason == "expired" else 400
        self.runner.run(self.outbox.dead_letter(events, reason, status, "model", self.now))
        self.unseen = (0, 0)
        sent = 0 if reason == "expired" else 1
        gone = self.model.remove({e.body for e in events})
        self.model.dead.extend(Dead(p.body, reason, p.attempts + sent, p.end_at) for p in gone)
        self.forget(events)

    @rule(reason=st.none() | st.sampled_from(DEAD_LETTER_REASONS), refresh=st.booleans())
    def replay(self, reason: DeadLetterReason | None, refresh: bool) -> None:
        """Dead letters go back to the end of the outbox, as new events with no attempts."""
        selection = deadletters.Selection(reason=reason)
        moved = self.runner.run(deadletters.replay(self.path, selection))
        back = [d for d in self.model.dead if reason in (None, d.reason)]
        assert len(back) == moved
        self.model.dead = [d for d in self.model.dead if d not in back]
        self.model.pending.extend(Pending(d.body, d.end_at) for d in back)
        size = sum(len(d.body) for d in back)
        self.unseen = (self.unseen[0] + len(back), self.unseen[1] + size)
        if refresh:  # as the flusher does once a second: take in what another process added
            self.runner.run(self.outbox.refresh_counts())
            self.unseen = (0, 0)

    @rule(reason=st.sampled_from(DEAD_LETTER_REASONS))
    def purge(self, reason: DeadLetterReason) -> None:
        """Purged dead letters are gone; the outbox's events are untouched."""
        selection = deadletters.Selection(reason=reason)
        purged = self.runner.run(deadletters.purge(self.path, selection))
        assert len([d for d in self.model.dead if d.reason == reason]) == purged
        self.model.dead = [d for d in self.model.dead if d.reason != reason]

    @rule(crashed=st.booleans())
    def restart(self, crashed: bool) -> None:
        """Reopening keeps every commit: after a clean close, or from a crash image (the file
        and its WAL copied while open, as a killed process leaves them)."""
        if crashed:
            old = self.path
            self.generation += 1
            self.path.parent.mkdir()
            for suffix in ("", *SIDECARS):
                source = old.with_name(old.name + suffix)
                if source.exists():
                    shutil.copyfile(source, self.path.with_name(self.path.name + suffix))
        self.runner.run(self.outbox.close())
        self.batch = []
        self.outbox = self.runner.run(Outbox.open(self.settings()))
        self.unseen = (0, 0)  # opening counts the file

    @invariant()
    def file_matches_model(self) -> None:
        """The file holds exactly the model's events and dead letters, in order, once each."""
        events, dead = file_state(self.path)
        assert [(p.body, p.attempts) for p in self.model.pending] == events
        assert [(d.body, d.reason, d.attempts) for d in self.model.dead] == dead
        bodies = [b for b, _ in events] + [b for b, _, _ in dead]
        assert len(bodies) == len(set(bodies))

    @invariant()
    def counts_match_file(self) -> None:
        """The outbox's counts are the file's (events and bytes), but for a replay not yet seen."""
        expected = (
            len(self.model.pending) - self.unseen[0],
            self.model_bytes() - self.unseen[1],
        )
        assert expected == (self.outbox.counts.events, self.outbox.counts.bytes)

    @invariant()
    def oldest_end_is_the_models(self) -> None:
        """The earliest end among the oldest pending events is read from the file."""
        ends = [p.end_at for p in self.model.pending if p.end_at is not None]
        assert (min(ends) if ends else None) == self.runner.run(self.outbox.oldest_end_at())

    def teardown(self) -> None:
        try:
            self.runner.run(self.outbox.close())
        finally:
            self.runner.close()
            shutil.rmtree(self.directory, ignore_errors=True)


TestOutboxModel = OutboxMachine.TestCase
TestOutboxModel.__doc__ = "The outbox never loses, duplicates or reorders an event."
