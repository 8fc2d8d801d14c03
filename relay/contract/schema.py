"""The intake's request model (the seed's Model tables), and validation of a request body.

The models only validate: what the relay stores and forwards is each event's bytes exactly
as the runner sent them (``relay.contract.body``), never a dump of these models, which would drop
unknown fields, reformat times or add defaults.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relay.contract.accepted import AcceptedEvent
from relay.contract.body import NotJSON, event_bytes, loads
from relay.contract.exceptions import RelayError
from relay.contract.intake import (
    MAX_ERROR_MESSAGE,
    MAX_ERROR_TYPE,
    MAX_EVENTS_PER_REQUEST,
    WINDOW_REFUSAL,
    WINDOW_S,
    WINDOW_TEXT,
)
from relay.contract.problems import (
    MAX_LISTED_PROBLEMS,
    Budget,
    Metrics,
    StringMap,
    Strings,
    Tags,
)

# The intake's path, which the relay serves too.
MAX_DURATION = timedelta(days=365)
INT64_MAX = 2**63 - 1
_MAX_DURATION_S = MAX_DURATION.total_seconds()

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: Any) -> str:
    """Only RFC3339 text gets through to pydantic's (faster, laxer) datetime parser."""
    if type(value) is not str or _RFC3339.fullmatch(value) is None:
        raise PydanticCustomError(
            "rfc3339", "must be an RFC3339 time with a time zone, such as 2024-11-25T20:08:11.018Z"
        )
    return value


# Finer digits than microseconds (nanoseconds) are accepted and truncated.
Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339), Field(strict=False)]
QueueTime = Annotated[int, Field(ge=0, le=INT64_MAX)]


class _Model(BaseModel):
    # strict: "false" is not a boolean and 1.5 is not an int64, as for the intake's JSON decoder.
    # ignore: unknown fields are not validated here, and are kept in the stored original.
    model_config = ConfigDict(strict=True, extra="ignore")


class Git(_Model):
    repository_url: str
    sha: str
    author_email: str
    author_name: str | None = None
    author_time: str | None = None
    branch: str | None = None
    commit_time: str | None = None
    committer_email: str | None = None
    committer_name: str | None = None
    default_branch: str | None = None
    message: str | None = None
    tag: str | None = None

    @model_validator(mode="after")
    def _tag_or_branch(self) -> Git:
        if self.tag is not None and self.branch is not None:
            raise PydanticCustomError("tag_and_branch", "has both tag and branch; send only one")
        return self


class Node(_Model):
    hostname: str | None = None
    labels: Strings | None = None
    name: str | None = None
    workspace: str | None = None


class CIError(_Model):
    domain: Literal["provider", "user", "unknown"] | None = None
    message: Annotated[str, Field(max_length=MAX_ERROR_MESSAGE)] | None = None
    stack: str | None = None
    type: Annotated[str, Field(max_length=MAX_ERROR_TYPE)] | None = None


class PipelineRef(_Model):
    id: str
    url: str | None = None


class _Resource(_Model):
    """Fields every level has."""

    name: str
    start: Time
    error: CIError | None = None
    git: Git | None = None
    node: Node | None = None
    metrics: Metrics | None = None
    tags: Tags | None = None
    parameters: StringMap | None = None


class _Finished(_Model):
    """A finished run: its end is checked against its start and the upstream's window."""

    # start is declared here as well as in _Resource so that, in the subclasses' field
    # order, it is validated before end and _end_in_range can read it.
    start: Time
    end: Time

    @field_validator("end")
    @classmethod
    def _end_in_range(cls, end: datetime, info: ValidationInfo) -> datetime:
        # Epoch seconds: cheaper than datetime arithmetic across time zones, per event.
        end_s = end.timestamp()
        start = info.data.get("start")
        start_s = start.timestamp() if start is not None else end_s
        if end_s < start_s:
            raise PydanticCustomError("end_before_start", "is before start")
        if end_s - start_s > _MAX_DURATION_S:
            raise PydanticCustomError("too_long", "is more than 1 year after start")
        now = info.context["now"] if info.context else time.time()
        if now - end_s > WINDOW_S:
            raise PydanticCustomError(
                "expired",
                f"is more than {WINDOW_TEXT} in the past; {WINDOW_REFUSAL}",
            )
        return end


class _PipelineFields(_Resource):
    level: Literal["pipeline"]
    unique_id: str
    url: str
    partial_retry: bool
    pipeline_id: str | None = None
    is_manual: bool | None = None
    is_resumed: bool | None = None
    parent_pipeline: PipelineRef | None = None
    previous_attempt: PipelineRef | None = None
    queue_time: QueueTime | None = None


class FinishedPipeline(_PipelineFields, _Finished):
    status: Literal["success", "error", "canceled", "skipped", "blocked"]


class RunningPipeline(_PipelineFields):
    status: Literal["running"]


class _ChildFields(_Resource):
    """Stages, jobs and steps name the pipeline they belong to."""

    id: str
    pipeline_name: str
    pipeline_unique_id: str


class Stage(_ChildFields, _Finished):
    level: Literal["stage"]
    status: Literal["success", "error", "canceled", "skipped"]
    dependencies: Strings | None = None
    queue_time: QueueTime | None = None


class _JobFields(_ChildFields):
    level: Literal["job"]
    url: str
    dependencies: Strings | None = None
    queue_time: QueueTime | None = None
    stage_id: str | None = None
    stage_name: str | None = None


class FinishedJob(_JobFields, _Finished):
    status: Literal["success", "error", "canceled", "skipped"]


class RunningJob(_JobFields):
    status: Literal["running"]


class Step(_ChildFields, _Finished):
    level: Literal["step"]
    status: Literal["success", "error"]
    url: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    stage_id: str | None = None
    stage_name: str | None = None


_VARIANTS = frozenset({"pipeline", "running_pipeline", "stage", "job", "running_job", "step"})


def _variant(resource: Any) -> str | None:
    """Which model validates a resource: its level, and for pipelines and jobs its status."""
    if not isinstance(resource, dict):
        return None
    level = resource.get("level")
    if level in ("pipeline", "job") and resource.get("status") == "running":
        return f"running_{level}"
    return level if level in ("pipeline", "stage", "job", "step") else None


Resource = Annotated[
    Annotated[FinishedPipeline, Tag("pipeline")]
    | Annotated[RunningPipeline, Tag("running_pipeline")]
    | Annotated[Stage, Tag("stage")]
    | Annotated[FinishedJob, Tag("job")]
    | Annotated[RunningJob, Tag("running_job")]
    | Annotated[Step, Tag("step")],
    Discriminator(
        _variant,
        custom_error_type="level",
        custom_error_message="must be an object whose level is one of: pipeline, stage, job, step",
    ),
]


class Attributes(_Model):
    resource: Resource
    env: str | None = None
    provider_name: str | None = None
    service: str | None = None


class Event(_Model):
    attributes: Attributes
    type: Literal["cipipeline_resource_request"] | None = None


_EVENT = TypeAdapter(Event)
# The adapter's own validator, called directly: TypeAdapter.validate_python passes eight
# keyword arguments through for every event (about 0.6 µs of a 9 µs event).
_VALIDATE_EVENT = _EVENT.validator.validate_python


class InvalidRequest(RelayError):
    """The request cannot be accepted; ``problems`` lists each reason with its JSON path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_events(events: Sequence[Mapping[str, Any]]) -> list[AcceptedEvent]:
    """Validate event dicts (items of ``data``) exactly as a request holding them would be.

    For code that builds events itself (the runner-side commands): the same rules, the same
    problems by JSON path (``data[0].attributes.resource.status: ...``), as InvalidRequest.
    """
    return parse_request(orjson.dumps({"data": list(events)}))


def parse_request(body: bytes) -> list[AcceptedEvent]:
    """The events of a request body, all valid, or InvalidRequest listing its problems.

    At most MAX_LISTED_PROBLEMS are listed; past them validation stops looking, so a bad
    request costs no more than a good one of the same size.
    """
    try:
        document = loads(body)
    except NotJSON as exc:
        raise InvalidRequest([f"body is not valid JSON: {exc}"]) from None
    raw_events, in_array = _split_data(document)
    problems: list[str] = []
    ends: list[float | None] = []
    budget = Budget()
    context = {"now": time.time(), "budget": budget}  # one clock reading for the request
    for index, raw in enumerate(raw_events):
        budget.left = MAX_LISTED_PROBLEMS - len(problems)
        try:
            event: Event = _VALIDATE_EVENT(raw, context=context)
        except ValidationError as exc:
            problems.extend(_describe(f"data[{index}]" if in_array else "data", exc))
        else:
            resource = event.attributes.resource
            ends.append(resource.end.timestamp() if isinstance(resource, _Finished) else None)
        if budget.more or len(problems) > MAX_LISTED_PROBLEMS:
            break
    if problems:
        raise InvalidRequest(_cap(problems, budget.more))
    originals = event_bytes(body)
    if len(originals) != len(ends):  # two parsers disagreeing is a bug, never a 202
        raise RuntimeError(f"{len(originals)} event spans for {len(ends)} parsed events")
    return [AcceptedEvent(original, end) for original, end in zip(originals, ends, strict=True)]


def _split_data(document: Any) -> tuple[list[Any], bool]:
    """The events of ``data``, and whether it is an array (the events' paths say so)."""
    if not isinstance(document, dict):
        raise InvalidRequest(["body must be a JSON object with a data field"])
    if "data" not in document:
        raise InvalidRequest(["data: field required"])
    data = document["data"]
    if isinstance(data, dict):
        if not data:
            raise InvalidRequest(
                [
                    "data: is an empty object; send one event object or an array of 1 to "
                    f"{MAX_EVENTS_PER_REQUEST} events (an empty data object usually means the "
                    "client failed to serialise its batch)"
                ]
            )
        return [data], False
    if isinstance(data, list):
        if not 1 <= len(data) <= MAX_EVENTS_PER_REQUEST:
            raise InvalidRequest(
                [f"data: holds {len(data)} events; send 1 to {MAX_EVENTS_PER_REQUEST} per request"]
            )
        return data, True
    raise InvalidRequest(["data: must be an event object or an array of event objects"])


def _describe(prefix: str, exc: ValidationError) -> list[str]:
    return [
        f"{_path(prefix, error['loc'])}: {error['msg']}{_got(error)}"
        for error in exc.errors(include_url=False)
    ]


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    # The discriminator's tag (e.g. "running_job") is not part of the JSON path.
    if len(loc) > 2 and loc[:2] == ("attributes", "resource") and loc[2] in _VARIANTS:
        loc = loc[:2] + loc[3:]
    parts = [prefix]
    for part in loc:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts)


def _got(error: Any) -> str:
    """The offending value, when it is a short scalar that helps to read the error."""
    if error["type"] in ("missing", "level") or "input" not in error:
        return ""
    value = error["input"]
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = orjson.dumps(value).decode()
        return f" (got {text})" if len(text) <= 80 else ""
    return ""


def _cap(problems: list[str], more: bool) -> list[str]:
    if len(problems) <= MAX_LISTED_PROBLEMS and not more:
        return problems
    return [
        *problems[:MAX_LISTED_PROBLEMS],
        f"... and more problems, not listed: the relay lists the first {MAX_LISTED_PROBLEMS} "
        "and stops looking",
    ]
