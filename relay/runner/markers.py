"""Start marks: ``emit --status running`` leaves one, the finished ``emit`` reads it.

A mark is a small file named after the event's identity (level, pipeline, job, name), in a
directory private to the user, so separate steps of one job find it without sharing state.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from relay.runner.facts import derived_id

MARKER_DIR_VARIABLE = "CI_RELAY_MARKER_DIR"


def marker_dir(env: Mapping[str, str]) -> Path:
    """Where start marks live: ``$CI_RELAY_MARKER_DIR``, else a per-user temporary folder."""
    chosen = env.get(MARKER_DIR_VARIABLE)
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"ci-relay-{os.getuid()}-marks"


class StartMark:
    """The start time of one event, kept between two commands."""

    def __init__(self, directory: Path, *identity: str) -> None:
        self.path = directory / derived_id("start", *identity)

    def write(self, start: str) -> None:
        """Keep ``start`` (replacing an earlier mark of the same event)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(start, encoding="utf-8")
        temporary.replace(self.path)

    def read(self) -> str | None:
        """The kept start, if any."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def remove(self) -> None:
        """Forget the mark once its finished event is sent."""
        self.path.unlink(missing_ok=True)
