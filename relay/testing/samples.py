"""Valid sample events of every level, with fresh timestamps.

For the relay's tests and benchmarks, and for anyone trying the relay by hand: each
function returns plain dicts in the intake's shape, which ``relay.contract.schema`` accepts.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

LEVELS = ("pipeline", "running_pipeline", "stage", "job", "running_job", "step")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(**delta: float) -> str:
    """An RFC3339 time ``delta`` before now."""
    return rfc3339(datetime.now(UTC) - timedelta(**delta))


def resource(kind: str = "pipeline") -> dict[str, Any]:
    """A valid resource of ``kind`` (one of LEVELS), ending 30 s ago."""
    git = {
        "repository_url": "https://github.com/DataDog/datadog-agent",
        "sha": "7f263865994b76066c4612fd1965215e7dcb4cd2",
        "author_email": "john.doe@email.com",
    }
    common: dict[str, Any] = {"start": ago(seconds=120), "end": ago(seconds=30), "git": git}
    child = {"pipeline_name": "Deploy to AWS", "pipeline_unique_id": str(uuid.uuid4())}
    by_kind: dict[str, dict[str, Any]] = {
        "pipeline": {
            "level": "pipeline",
            "unique_id": str(uuid.uuid4()),
            "name": "Deploy to AWS",
            "url": "https://my-ci-provider.example/pipelines/my-pipeline/run/1",
            "status": "success",
            "partial_retry": False,
        },
        "stage": {"level": "stage", "id": str(uuid.uuid4()), "name": "build", "status": "success"}
        | child,
        "job": {
            "level": "job",
            "id": str(uuid.uuid4()),
            "name": "compile",
            "url": "https://my-ci-provider.example/jobs/1",
            "status": "success",
        }
        | child,
        "step": {"level": "step", "id": str(uuid.uuid4()), "name": "make", "status": "success"}
        | child,
    }
    running = kind.startswith("running_")
    base = kind.removeprefix("running_")
    result = common | copy.deepcopy(by_kind[base])
    if running:
        result["status"] = "running"
        del result["end"]
    return result


def event(kind: str = "pipeline", **resource_fields: Any) -> dict[str, Any]:
    """A valid event (``data`` item) of ``kind``; ``resource_fields`` override the resource."""
    return {
        "attributes": {"resource": resource(kind) | resource_fields},
        "type": "cipipeline_resource_request",
    }


def request(*events: dict[str, Any]) -> dict[str, Any]:
    """A request body: one event as an object, several as an array."""
    return {"data": events[0] if len(events) == 1 else list(events)}
