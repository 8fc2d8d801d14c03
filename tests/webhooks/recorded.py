"""The recorded webhook payloads (payloads/*/README.md gives their sources), times shifted.

A payload's times are moved together, each kept in its own format (GitLab's
``2025-04-01 18:31:49 UTC`` or RFC3339; GitHub's ``...Z``), so that its latest time is
``ago`` before now and every difference between its times stays as recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PAYLOADS = Path(__file__).parent / "payloads"
_GITLAB_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
_A_MINUTE = timedelta(minutes=1)


def gitlab(name: str, ago: timedelta = _A_MINUTE) -> dict[str, Any]:
    """``payloads/gitlab/<name>`` (e.g. ``pipeline.json``), its latest time ``ago`` before now."""
    return _shifted(PAYLOADS / "gitlab" / name, ago)


def github(name: str, ago: timedelta = _A_MINUTE) -> dict[str, Any]:
    """``payloads/github/<name>.json`` (e.g. ``workflow_run.completed``), shifted likewise."""
    return _shifted(PAYLOADS / "github" / f"{name}.json", ago)


def _shifted(path: Path, ago: timedelta) -> dict[str, Any]:
    payload = json.loads(path.read_text())
    times: list[datetime] = []

    def note(value: str) -> str:
        times.append(read_time(value))
        return value

    walk_times(payload, note)
    delta = datetime.now(UTC) - ago - max(times)
    result: dict[str, Any] = walk_times(
        payload, lambda value: _write(read_time(value) + delta, value)
    )
    return result


def read_time(value: str) -> datetime:
    """A recorded time in either of its formats."""
    if _GITLAB_TIME.fullmatch(value):
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    return datetime.fromisoformat(value)


def _write(moment: datetime, like: str) -> str:
    """``moment`` in the format of ``like``."""
    if _GITLAB_TIME.fullmatch(like):
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if like.endswith("Z"):
        spec = "milliseconds" if "." in like else "seconds"
        return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")
    return moment.isoformat()


def walk_times(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with every time string replaced by ``change(text)``."""
    if isinstance(value, dict):
        return {key: walk_times(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [walk_times(item, change) for item in value]
    if isinstance(value, str) and (_GITLAB_TIME.fullmatch(value) or _ISO_TIME.fullmatch(value)):
        return change(value)
    return value
