"""Liveness and readiness: what ``GET /health`` and ``GET /ready`` report, and why.

``/health`` (liveness): the event loop answers and the outbox's writer task is alive; a
failing one means the process should be restarted. ``/ready`` (readiness for runners): the
outbox is open with its migrations applied, below its limits, and on a file system that
takes writes; a failing one means runners would get 503 now, not that anything is broken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

# typing's TypedDict is not enough for pydantic before Python 3.12 (GET /openapi.json).
from typing_extensions import TypedDict

from relay.config import OutboxSettings
from relay.store.outbox import Outbox

# Readiness wants room for at least this much more on the outbox's file system.
_MIN_FREE_BYTES = 1024 * 1024


class ProbeBody(TypedDict):
    """What a probe answers: ``ok`` or ``failing``, and each check by name."""

    status: Literal["ok", "failing"]
    checks: dict[str, str]


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: passed or not, and each check by name (``"ok"`` or why not)."""

    checks: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(value == "ok" for value in self.checks.values())

    def body(self) -> ProbeBody:
        return {"status": "ok" if self.passed else "failing", "checks": self.checks}


def liveness(outbox: Outbox) -> Verdict:
    """The writer task is alive (the event loop is, since it answers)."""
    return Verdict({"outbox_writer": _writer(outbox)})


def readiness(outbox: Outbox, settings: OutboxSettings) -> Verdict:
    """Runners would get 202 now: writer alive, below the limits, the disk takes writes."""
    counts = outbox.counts
    limits = "ok"
    full = counts.full(settings)
    if full == "max_events":
        limits = f"full: {counts.events} events pending, outbox.max_events is {settings.max_events}"
    elif full == "max_bytes":
        limits = f"full: {counts.bytes} bytes pending, outbox.max_bytes is {settings.max_bytes}"
    return Verdict(
        {"outbox_writer": _writer(outbox), "outbox_limits": limits, "disk": _disk(settings)}
    )


def _writer(outbox: Outbox) -> str:
    if outbox.task.done():
        return "the outbox writer has stopped"
    return "ok"


def _disk(settings: OutboxSettings) -> str:
    try:
        stats = os.statvfs(settings.path.parent)
    except OSError as exc:
        return f"cannot read the outbox's file system: {exc.strerror or exc}"
    if stats.f_flag & os.ST_RDONLY:
        return f"{settings.path.parent} is on a read-only file system"
    free = stats.f_bavail * stats.f_frsize
    if free < _MIN_FREE_BYTES:
        return f"{free} bytes free on the outbox's file system"
    return "ok"
