"""Validation of the seed's request model through ``parse_request``: pure, no HTTP."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.contract.schema import (
    Attributes,
    CIError,
    Event,
    FinishedJob,
    FinishedPipeline,
    Git,
    InvalidRequest,
    Node,
    PipelineRef,
    RunningJob,
    RunningPipeline,
    Stage,
    Step,
    parse_request,
)
from relay.testing.samples import LEVELS, ago, event, request

RESOURCE = "data.attributes.resource"
GIT = f"{RESOURCE}.git"


def parse(document: Any) -> list[Any]:
    """The accepted events of ``document`` (encoded as JSON), as decoded JSON objects."""
    return [orjson.loads(accepted.body) for accepted in parse_request(orjson.dumps(document))]


def problems_of(document: Any) -> list[str]:
    """The problems ``parse_request`` lists for ``document``, which it must refuse."""
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(InvalidRequest) as refused:
        parse_request(body)
    return refused.value.problems


def paths(problems: list[str]) -> list[str]:
    """The JSON path of each problem ("<path>: <message>")."""
    return [problem.split(": ", 1)[0] for problem in problems]


def seed_time(moment: datetime) -> str:
    """A time in the seed examples' format (``2021-11-11T11:09:11+00:00``)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def seed_examples() -> list[dict[str, Any]]:
    """The seed's three request examples, with fresh times instead of 2021's."""
    now = datetime.now(UTC)
    start, end = seed_time(now - timedelta(minutes=2)), seed_time(now - timedelta(seconds=30))
    git = {
        "repository_url": "https://github.com/DataDog/datadog-agent",
        "sha": "7f263865994b76066c4612fd1965215e7dcb4cd2",
        "author_email": "john.doe@email.com",
    }
    finished = {
        "level": "pipeline",
        "unique_id": "3eacb6f3-ff04-4e10-8a9c-46e6d054024a",
        "name": "Deploy to AWS",
        "url": "https://my-ci-provider.example/pipelines/my-pipeline/run/1",
        "start": start,
        "end": end,
        "status": "success",
        "partial_retry": False,
        "git": git,
    }
    running = {k: v for k, v in finished.items() if k != "end"} | {"status": "running"}
    wrap = "cipipeline_resource_request"
    return [
        # 1. A finished pipeline.
        {"data": {"attributes": {"resource": finished}, "type": wrap}},
        # 2. The same with attributes.provider_name.
        {
            "data": {
                "attributes": {"provider_name": "example-provider", "resource": finished},
                "type": wrap,
            }
        },
        # 3. A running pipeline: status running, no end.
        {"data": {"attributes": {"resource": running}, "type": wrap}},
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["finished", "provider_name", "running"])
def test_seed_examples_are_accepted(index: int) -> None:
    """Each of the seed's request examples, with fresh times, is accepted unchanged."""
    document = seed_examples()[index]
    assert [document["data"]] == parse(document)


@pytest.mark.parametrize("kind", LEVELS)
def test_one_event_of_each_level_is_accepted(kind: str) -> None:
    """A valid event of each level (finished and running pipelines and jobs) is accepted."""
    original = event(kind)
    assert [original] == parse(request(original))


def test_running_job_has_no_end_and_no_end_at() -> None:
    """A running job is accepted without an end, and has no end time to expire by."""
    original = event("running_job")
    assert "end" not in original["attributes"]["resource"]
    [accepted] = parse_request(orjson.dumps(request(original)))
    assert accepted.end_at is None


def test_finished_event_end_at_is_its_end() -> None:
    """A finished event's end_at is its end, in epoch seconds."""
    end = datetime.now(UTC) - timedelta(seconds=30)
    original = event("stage", end=end.isoformat())
    [accepted] = parse_request(orjson.dumps(request(original)))
    assert end.timestamp() == pytest.approx(accepted.end_at)


# --- required fields -------------------------------------------------------------------------

REQUIRED_RESOURCE_FIELDS = [
    # Finished pipeline (seed "Details of a finished pipeline").
    *[
        ("pipeline", f)
        for f in ("unique_id", "name", "url", "start", "end", "status", "partial_retry")
    ],
    # Running pipeline: the same, minus end.
    *[
        ("running_pipeline", f)
        for f in ("unique_id", "name", "url", "start", "status", "partial_retry")
    ],
    # Stage.
    *[
        ("stage", f)
        for f in ("id", "name", "pipeline_name", "pipeline_unique_id", "start", "end", "status")
    ],
    # Finished job.
    *[
        ("job", f)
        for f in (
            "id",
            "name",
            "pipeline_name",
            "pipeline_unique_id",
            "url",
            "start",
            "end",
            "status",
        )
    ],
    # Running job: the same, minus end.
    *[
        ("running_job", f)
        for f in ("id", "name", "pipeline_name", "pipeline_unique_id", "url", "start", "status")
    ],
    # Step.
    *[
        ("step", f)
        for f in ("id", "name", "pipeline_name", "pipeline_unique_id", "start", "end", "status")
    ],
]


@pytest.mark.parametrize(("kind", "field"), REQUIRED_RESOURCE_FIELDS)
def test_missing_required_resource_field_is_named(kind: str, field: str) -> None:
    """Removing a required field of a resource gives a 'Field required' error at its path."""
    original = event(kind)
    del original["attributes"]["resource"][field]
    assert f"{RESOURCE}.{field}: Field required" in problems_of(request(original))


@pytest.mark.parametrize("kind", LEVELS)
def test_missing_level_is_named(kind: str) -> None:
    """A resource without level is refused at its path with a message that names level."""
    original = event(kind)
    del original["attributes"]["resource"]["level"]
    [problem] = problems_of(request(original))
    assert problem.startswith(f"{RESOURCE}: ")
    assert "level" in problem


@pytest.mark.parametrize("kind", LEVELS)
@pytest.mark.parametrize("field", ["repository_url", "sha", "author_email"])
def test_missing_required_git_field_is_named(kind: str, field: str) -> None:
    """Removing a required git field, at any level, is refused at resource.git.<field>."""
    original = event(kind)
    del original["attributes"]["resource"]["git"][field]
    assert [f"{GIT}.{field}: Field required"] == problems_of(request(original))


@pytest.mark.parametrize("kind", ["pipeline", "running_pipeline"])
@pytest.mark.parametrize("ref", ["parent_pipeline", "previous_attempt"])
def test_pipeline_reference_without_id_is_refused(kind: str, ref: str) -> None:
    """A parent_pipeline or previous_attempt without its required id is refused at <ref>.id."""
    original = event(kind, **{ref: {"url": "https://ci.example/pipelines/0"}})
    assert [f"{RESOURCE}.{ref}.id: Field required"] == problems_of(request(original))


def test_missing_resource_is_named() -> None:
    """An event whose attributes have no resource is refused at data.attributes.resource."""
    original = event("pipeline")
    del original["attributes"]["resource"]
    assert [f"{RESOURCE}: Field required"] == problems_of(request(original))


def test_missing_attributes_is_named() -> None:
    """An event without attributes is refused at data.attributes."""
    original = event("pipeline")
    del original["attributes"]
    assert ["data.attributes: Field required"] == problems_of(request(original))


# --- enums, patterns and ranges that are refused ---------------------------------------------

# (kind, where the overrides go, overrides, path of the expected problem, text in its message)
# where: "event" (the data item), "attributes", "resource", "error" or "git" (resource objects).
REFUSED = [
    # Status enums per level.
    pytest.param("pipeline", "resource", {"status": "succes"}, "status", "", id="pipeline-succes"),
    pytest.param("pipeline", "resource", {"status": "queued"}, "status", "", id="pipeline-queued"),
    pytest.param("stage", "resource", {"status": "blocked"}, "status", "", id="stage-blocked"),
    pytest.param("stage", "resource", {"status": "running"}, "status", "", id="stage-running"),
    pytest.param("job", "resource", {"status": "blocked"}, "status", "", id="job-blocked"),
    pytest.param("step", "resource", {"status": "canceled"}, "status", "", id="step-canceled"),
    pytest.param("step", "resource", {"status": "skipped"}, "status", "", id="step-skipped"),
    pytest.param("step", "resource", {"status": "running"}, "status", "", id="step-running"),
    # level must be one of pipeline, stage, job, step.
    pytest.param("pipeline", "resource", {"level": "workflow"}, "", "level", id="level-unknown"),
    # error.domain enum.
    pytest.param("job", "error", {"domain": "developer"}, "error.domain", "", id="error-domain"),
    # type enum (optional, but only this value).
    pytest.param("pipeline", "event", {"type": "cipipeline"}, "data.type", "", id="type"),
    # tags: key:value strings.
    pytest.param("stage", "resource", {"tags": ["novalue"]}, "tags[0]", "key:value", id="tag-1"),
    pytest.param("stage", "resource", {"tags": ["k:v", ":v"]}, "tags[1]", "key:value", id="tag-2"),
    pytest.param("stage", "resource", {"tags": ["k:"]}, "tags[0]", "key:value", id="tag-3"),
    pytest.param("stage", "resource", {"tags": [7]}, "tags[0]", "string", id="tag-not-str"),
    # metrics: key:value with a numeric value.
    pytest.param("job", "resource", {"metrics": ["a:b"]}, "metrics[0]", "numeric", id="metric-b"),
    pytest.param("job", "resource", {"metrics": ["a:nan"]}, "metrics[0]", "numeric", id="nan"),
    pytest.param("job", "resource", {"metrics": ["a:inf"]}, "metrics[0]", "numeric", id="inf"),
    # Digits of other scripts are digits to Python's regex and float(), not to the intake.
    pytest.param(
        "job", "resource", {"metrics": ["a:1\u0663"]}, "metrics[0]", "numeric", id="metric-digit"
    ),
    pytest.param(
        "job", "resource", {"metrics": ["a:1.\uff11"]}, "metrics[0]", "numeric", id="metric-wide"
    ),
    pytest.param("job", "resource", {"metrics": ["a:"]}, "metrics[0]", "key:value", id="metric-"),
    pytest.param("job", "resource", {"metrics": ["a"]}, "metrics[0]", "key:value", id="metric"),
    # RFC3339 times.
    pytest.param(
        "pipeline",
        "resource",
        {"start": "2024-11-25T20:08:11"},
        "start",
        "RFC3339",
        id="time-no-tz",
    ),
    pytest.param(
        "pipeline", "resource", {"start": "2024-11-25"}, "start", "RFC3339", id="time-date-only"
    ),
    pytest.param(
        "pipeline", "resource", {"start": 1732565291}, "start", "RFC3339", id="time-unix-number"
    ),
    pytest.param("step", "resource", {"end": "garbage"}, "end", "RFC3339", id="time-garbage"),
    pytest.param(
        "step", "resource", {"end": "2024-13-45T25:61:00Z"}, "end", "valid", id="time-impossible"
    ),
    # end before start.
    pytest.param(
        "stage",
        "resource",
        {"start": ago(seconds=30), "end": ago(seconds=90)},
        "end",
        "before start",
        id="end-before-start",
    ),
    # end - start more than 1 year.
    pytest.param(
        "job",
        "resource",
        {"start": ago(days=400), "end": ago(seconds=30)},
        "end",
        "1 year",
        id="longer-than-a-year",
    ),
    # queue_time: int64 >= 0, strictly an integer.
    pytest.param("pipeline", "resource", {"queue_time": -1}, "queue_time", "", id="queue-neg"),
    pytest.param("stage", "resource", {"queue_time": 1.5}, "queue_time", "", id="queue-float"),
    pytest.param("job", "resource", {"queue_time": "100"}, "queue_time", "", id="queue-str"),
    pytest.param(
        "pipeline", "resource", {"queue_time": 2**63}, "queue_time", "", id="queue-over-int64"
    ),
    # partial_retry is strictly a boolean.
    pytest.param(
        "pipeline",
        "resource",
        {"partial_retry": "false"},
        "partial_retry",
        "boolean",
        id="partial-retry-str",
    ),
    pytest.param(
        "running_pipeline",
        "resource",
        {"partial_retry": 0},
        "partial_retry",
        "boolean",
        id="partial-retry-int",
    ),
    # error.message <= 5000 and error.type <= 100 characters.
    pytest.param(
        "step", "error", {"message": "m" * 5001}, "error.message", "5000", id="error-message-long"
    ),
    pytest.param("step", "error", {"type": "t" * 101}, "error.type", "100", id="error-type-long"),
    # git: tag or branch, not both.
    pytest.param(
        "pipeline",
        "git",
        {"tag": "v1.0", "branch": "main"},
        "git",
        "tag and branch",
        id="git-tag-and-branch",
    ),
    # parameters: a map of strings.
    pytest.param(
        "pipeline",
        "resource",
        {"parameters": {"a": "x", "n": 1}},
        "parameters.n",
        "",
        id="parameters-int",
    ),
    # env, provider_name and service are strings.
    pytest.param("job", "attributes", {"env": 1}, "data.attributes.env", "string", id="env"),
    pytest.param(
        "job",
        "attributes",
        {"provider_name": True},
        "data.attributes.provider_name",
        "string",
        id="provider-name",
    ),
    pytest.param(
        "job", "attributes", {"service": ["s"]}, "data.attributes.service", "string", id="service"
    ),
]


def apply(original: dict[str, Any], where: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``original`` with ``overrides`` merged into the object ``where`` names."""
    changed = copy.deepcopy(original)
    resource = changed["attributes"]["resource"]
    target = {
        "event": changed,
        "attributes": changed["attributes"],
        "resource": resource,
        "error": resource.setdefault("error", {}),
        "git": resource.setdefault("git", {}),
    }[where]
    target.update(overrides)
    return changed


def full_path(path: str) -> str:
    """``path`` under the resource, unless it is already absolute (starts with data)."""
    if path.startswith("data"):
        return path
    return f"{RESOURCE}.{path}" if path else RESOURCE


@pytest.mark.parametrize(("kind", "where", "overrides", "path", "says"), REFUSED)
def test_rule_violation_is_refused_at_its_path(
    kind: str, where: str, overrides: dict[str, Any], path: str, says: str
) -> None:
    """Each enum, pattern and range rule refuses a bad value with one problem at its path."""
    [problem] = problems_of(request(apply(event(kind), where, overrides)))
    assert [full_path(path)] == paths([problem])
    assert says in problem


@pytest.mark.parametrize("kind", ["pipeline", "stage", "job", "step"])
def test_end_older_than_18_hours_is_refused(kind: str) -> None:
    """A finished event that ended over 18 hours ago is refused: the intake would refuse it."""
    original = event(kind, start=ago(hours=19), end=ago(hours=18, minutes=1))
    [problem] = problems_of(request(original))
    assert f"{RESOURCE}.end" == paths([problem])[0]
    assert "18 hours" in problem
    assert "intake refuses" in problem


# --- accepted edge cases ---------------------------------------------------------------------


def fresh(moment_ago: timedelta, offset: timedelta = timedelta(0), digits: str = "") -> str:
    """An RFC3339 time ``moment_ago`` before now, at UTC ``offset``, with extra ``digits``."""
    moment = (datetime.now(UTC) - moment_ago).astimezone(timezone(offset))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    zone = "Z" if not offset else moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:]
    return f"{text}{digits}{zone}"


# (kind, where the overrides go, overrides): each is valid.
ACCEPTED = [
    # git with only tag, only branch, neither.
    pytest.param("pipeline", "git", {"tag": "v1.2.3"}, id="git-only-tag"),
    pytest.param("job", "git", {"branch": "main"}, id="git-only-branch"),
    pytest.param("step", "git", {}, id="git-neither"),
    # All optional git fields, as strings.
    pytest.param(
        "stage",
        "git",
        {
            "author_name": "John Doe",
            "author_time": "2024-11-25T20:08:11Z",
            "commit_time": "2024-11-25T20:08:11Z",
            "committer_email": "jane@example.com",
            "committer_name": "Jane",
            "default_branch": "main",
            "message": "fix: everything",
            "branch": "feature/x",
        },
        id="git-all-fields",
    ),
    # A stage with a url: not in the stage model, an unknown extra kept as is.
    pytest.param("stage", "resource", {"url": "https://ci.example/stages/1"}, id="stage-url"),
    # Nanosecond fractions and +02:00 / -05:30 offsets.
    pytest.param(
        "job",
        "resource",
        {
            "start": fresh(timedelta(minutes=5), digits=".123456789"),
            "end": fresh(timedelta(seconds=30), digits=".987654321"),
        },
        id="nanoseconds",
    ),
    pytest.param(
        "pipeline",
        "resource",
        {
            "start": fresh(timedelta(minutes=5), offset=timedelta(hours=2)),
            "end": fresh(timedelta(seconds=30), offset=timedelta(hours=2), digits=".5"),
        },
        id="offset-plus-0200",
    ),
    pytest.param(
        "step",
        "resource",
        {
            "start": fresh(timedelta(minutes=5), offset=-timedelta(hours=5, minutes=30)),
            "end": fresh(timedelta(seconds=30)),
        },
        id="offset-minus-0530",
    ),
    # Numeric metric values: decimals, negatives, exponents.
    pytest.param(
        "job", "resource", {"metrics": ["build.time:12.5", "n:-3", "x:1e3", "z:0"]}, id="metrics"
    ),
    # Tags whose value holds a colon.
    pytest.param("stage", "resource", {"tags": ["team:ci", "url:http://x"]}, id="tags"),
    # Bounds: queue_time 0 and int64 max; error.message 5000 and error.type 100 characters.
    pytest.param("pipeline", "resource", {"queue_time": 0}, id="queue-time-0"),
    pytest.param("running_job", "resource", {"queue_time": 2**63 - 1}, id="queue-time-max"),
    pytest.param(
        "step",
        "error",
        {"domain": "user", "message": "m" * 5000, "type": "t" * 100, "stack": "s"},
        id="error-at-limits",
    ),
    # end 17 hours ago: inside the intake's window.
    pytest.param("stage", "resource", {"start": ago(hours=17), "end": ago(hours=17)}, id="17h"),
    # end == start, and a duration just under a year.
    pytest.param("step", "resource", {"start": ago(seconds=30), "end": ago(seconds=30)}, id="0s"),
    pytest.param("job", "resource", {"start": ago(days=364), "end": ago(seconds=30)}, id="364d"),
    # A running pipeline that started long ago: only a finished event's end is checked.
    pytest.param("running_pipeline", "resource", {"start": ago(days=30)}, id="running-old"),
    # Optional pipeline fields.
    pytest.param(
        "pipeline",
        "resource",
        {
            "pipeline_id": "42",
            "is_manual": True,
            "is_resumed": False,
            "parent_pipeline": {"id": "p", "url": "https://ci.example/p"},
            "previous_attempt": {"id": "a"},
            "parameters": {"ENV": "prod", "EMPTY": ""},
            "node": {"hostname": "h", "labels": ["l"], "name": "n", "workspace": "/w"},
        },
        id="pipeline-optionals",
    ),
    # Optional attributes and child fields.
    pytest.param(
        "job", "attributes", {"env": "prod", "provider_name": "p", "service": "s"}, id="attributes"
    ),
    pytest.param(
        "step",
        "resource",
        {"job_id": "j", "job_name": "J", "stage_id": "s", "stage_name": "S", "url": "u"},
        id="step-optionals",
    ),
    pytest.param("job", "resource", {"dependencies": ["a"], "stage_id": "s"}, id="job-optionals"),
    # Unknown extra fields anywhere: event, attributes, resource, git, error.
    pytest.param("pipeline", "event", {"id": "x", "meta": {"a": [1, None]}}, id="extra-event"),
    pytest.param("job", "attributes", {"extra": [1.5, True, {"k": "v"}]}, id="extra-attributes"),
    pytest.param("step", "resource", {"custom": {"deep": [{"x": None}]}}, id="extra-resource"),
    pytest.param("stage", "git", {"signed": False, "x": 3}, id="extra-git"),
    pytest.param("pipeline", "error", {"code": 137, "exit": "OOM"}, id="extra-error"),
]


@pytest.mark.parametrize(("kind", "where", "overrides"), ACCEPTED)
def test_edge_case_is_accepted_and_stored_unchanged(
    kind: str, where: str, overrides: dict[str, Any]
) -> None:
    """Each accepted edge case is stored as the original JSON, every value unchanged."""
    original = apply(event(kind), where, overrides)
    [accepted] = parse_request(orjson.dumps(request(original)))
    assert original == orjson.loads(accepted.body)


def test_times_are_stored_as_sent() -> None:
    """Times are stored as the runner wrote them, not reformatted or truncated."""
    start = fresh(timedelta(minutes=5), offset=timedelta(hours=2), digits=".123456789")
    end = fresh(timedelta(seconds=30), digits=".000000001")
    [accepted] = parse_request(orjson.dumps(request(event("job", start=start, end=end))))
    resource = orjson.loads(accepted.body)["attributes"]["resource"]
    assert (start, end) == (resource["start"], resource["end"])


def test_stored_body_is_each_event_as_sent() -> None:
    """Each stored body is its event alone (not the request), in the order sent, as sent."""
    originals = [event(kind) for kind in LEVELS]
    accepted = parse_request(json.dumps(request(*originals), indent=2).encode())
    assert originals == [orjson.loads(a.body) for a in accepted]
    indented = [json.dumps(o, indent=2).replace("\n", "\n    ").encode() for o in originals]
    assert indented == [a.body for a in accepted]


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30 + 1])
def test_big_integer_in_unknown_field_is_stored_unchanged(number: int) -> None:
    """An unknown field holding an integer beyond 64 bits is stored with its exact value."""
    original = event("pipeline", build_number=number)
    [accepted] = parse_request(json.dumps(request(original)).encode())
    stored = json.loads(accepted.body)["attributes"]["resource"]["build_number"]
    assert (int, number) == (type(stored), stored)


# --- data: one object or 1 to 1000 -----------------------------------------------------------


def test_empty_data_object_is_refused_with_an_explanation() -> None:
    """``{"data": {}}`` is refused with a detail that says why (an empty object, 1 to 1000)."""
    [problem] = problems_of({"data": {}})
    assert problem.startswith("data: ")
    assert "empty object" in problem
    assert "1000" in problem


def test_empty_data_array_is_refused() -> None:
    """``{"data": []}`` is refused: a request holds 1 to 1000 events."""
    [problem] = problems_of({"data": []})
    assert problem.startswith("data: ")
    assert "0 events" in problem


def test_1000_events_are_accepted() -> None:
    """A request of 1000 events (the maximum) is accepted, every event in order."""
    originals = [event(LEVELS[i % len(LEVELS)]) for i in range(1000)]
    assert originals == parse(request(*originals))


def test_1001_events_are_refused() -> None:
    """A request of 1001 events is refused with a detail naming the 1000 maximum."""
    [problem] = problems_of(request(*[event("step") for _ in range(1001)]))
    assert problem.startswith("data: ")
    assert "1001" in problem
    assert "1000" in problem


# (body, text in its only problem)
BAD_BODIES = [
    pytest.param(b'{"events": []}', "data: field required", id="data-missing"),
    pytest.param(b'{"data": "event"}', "data: must be", id="data-string"),
    pytest.param(b'{"data": null}', "data: must be", id="data-null"),
    pytest.param(b'{"data": 3}', "data: must be", id="data-number"),
    pytest.param(b"[]", "JSON object", id="body-array"),
    pytest.param(b'"data"', "JSON object", id="body-string"),
    pytest.param(b"null", "JSON object", id="body-null"),
    pytest.param(b'{"data": {', "not valid JSON", id="json-truncated"),
    pytest.param(b"", "not valid JSON", id="json-empty"),
    pytest.param(b"{'data': {}}", "not valid JSON", id="json-single-quotes"),
    pytest.param(b"\xff\xfe", "not valid JSON", id="json-not-utf8"),
    pytest.param(b"[" * 10_000, "not valid JSON", id="json-too-deep"),
]


@pytest.mark.parametrize(("body", "says"), BAD_BODIES)
def test_malformed_body_is_refused(body: bytes, says: str) -> None:
    """A body that is not a JSON object with a data field gets one problem saying so."""
    [problem] = problems_of(body)
    assert says in problem


def test_data_items_that_are_not_objects_are_refused_each() -> None:
    """Array items that are not event objects are each refused at their index."""
    problems = problems_of({"data": [1, "x", None, event("job")]})
    assert ["data[0]", "data[1]", "data[2]"] == paths(problems)


def test_every_problem_is_listed_with_its_index() -> None:
    """All problems of all events are listed, each with its event's index; valid ones are not."""
    bad_status = event("stage", status="running")
    no_name = event("job")
    del no_name["attributes"]["resource"]["name"]
    bad_tag = apply(event("step"), "resource", {"tags": ["ok:1", "bad"]})
    problems = problems_of(request(bad_status, event("pipeline"), no_name, bad_tag))
    expected = [
        "data[0].attributes.resource.status",
        "data[2].attributes.resource.name",
        "data[3].attributes.resource.tags[1]",
    ]
    assert expected == paths(problems)


def test_several_problems_of_one_event_are_all_listed() -> None:
    """One event with several problems gets one entry for each."""
    original = event("pipeline", status="done", partial_retry="no", queue_time=-5)
    del original["attributes"]["resource"]["url"]
    problems = problems_of(request(original))
    expected = {f"{RESOURCE}.{f}" for f in ("status", "partial_retry", "queue_time", "url")}
    assert expected == set(paths(problems))


MORE = "... and more problems, not listed: the relay lists the first 100 and stops looking"


def test_problem_list_is_capped() -> None:
    """Past 100 problems the list ends with one entry saying the rest are not listed."""
    problems = problems_of(request(*[event("step", status="x") for _ in range(150)]))
    assert 101 == len(problems)
    assert "data[99].attributes.resource.status" == paths(problems)[99]
    assert MORE == problems[100]


def test_exactly_100_problems_are_all_listed() -> None:
    """A request with exactly 100 problems lists them all, with no entry about more."""
    problems = problems_of(request(*[event("step", status="x") for _ in range(100)]))
    assert [f"data[{i}].attributes.resource.status" for i in range(100)] == paths(problems)


@pytest.mark.parametrize(
    ("field", "item"),
    [
        pytest.param("tags", 1, id="tags-numbers"),
        pytest.param("tags", "x", id="tags-without-colon"),
        pytest.param("metrics", "m:x", id="metrics-not-numeric"),
        pytest.param("dependencies", None, id="dependencies-null"),
    ],
)
def test_huge_list_of_bad_items_lists_the_first_100(field: str, item: Any) -> None:
    """A list of 200,000 bad items lists its first 100 problems, then one entry for the rest."""
    problems = problems_of(request(event("job", **{field: [item] * 200_000})))
    assert [f"{RESOURCE}.{field}[{i}]" for i in range(100)] == paths(problems[:100])
    assert MORE == problems[100]


def test_huge_map_of_bad_values_lists_the_first_100() -> None:
    """A parameters map of 200,000 non-string values lists its first 100 problems."""
    parameters = {f"p{i}": i for i in range(200_000)}
    problems = problems_of(request(event("pipeline", parameters=parameters)))
    assert [f"{RESOURCE}.parameters.p{i}" for i in range(100)] == paths(problems[:100])
    assert MORE == problems[100]


def test_listing_stops_at_100_across_events() -> None:
    """Problems of later events are not listed once the first events gave 100."""
    first = event("stage", tags=["bad"] * 150)
    second = event("job", status="nope")
    problems = problems_of(request(first, second))
    assert [f"data[0].{RESOURCE[5:]}.tags[{i}]" for i in range(100)] == paths(problems[:100])
    assert [MORE] == problems[100:]


@pytest.mark.parametrize(
    ("where", "fields", "path", "says"),
    [
        pytest.param("resource", {"tags": "a:b"}, "tags", "valid list", id="tags-not-a-list"),
        pytest.param(
            "resource", {"parameters": ["a"]}, "parameters", "dictionary", id="parameters-list"
        ),
        pytest.param(
            "resource",
            {"node": {"labels": ["ok", 3]}},
            "node.labels[1]",
            "valid string",
            id="labels-item",
        ),
        pytest.param(
            "resource", {"dependencies": ["a", "b", 7]}, "dependencies[2]", "string", id="deps"
        ),
    ],
)
def test_collection_problems_keep_their_paths(
    where: str, fields: dict[str, Any], path: str, says: str
) -> None:
    """Lists and maps refuse a wrong container or a wrong item at its exact path."""
    [problem] = problems_of(request(apply(event("job"), where, fields)))
    assert [full_path(path)] == paths([problem])
    assert says in problem


# --- property: unknown fields are kept, values unchanged -------------------------------------

MODELS = (
    Event,
    Attributes,
    FinishedPipeline,
    RunningPipeline,
    Stage,
    FinishedJob,
    RunningJob,
    Step,
    Git,
    Node,
    CIError,
    PipelineRef,
)
FIELD_NAMES = frozenset(name for model in MODELS for name in model.model_fields)

# JSON values orjson reads back exactly: integers within 64 bits (bigger ones are pinned by
# test_big_integer_in_unknown_field_is_stored_unchanged) and finite floats.
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
EXTRA_FIELDS = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda key: key not in FIELD_NAMES),
    JSON_VALUES,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(LEVELS),
    extras=st.fixed_dictionaries(
        {
            "event": EXTRA_FIELDS,
            "attributes": EXTRA_FIELDS,
            "resource": EXTRA_FIELDS,
            "git": EXTRA_FIELDS,
        }
    ),
)
def test_unknown_fields_round_trip(kind: str, extras: dict[str, dict[str, Any]]) -> None:
    """A valid event with random unknown fields anywhere is accepted and stored unchanged."""
    original = event(kind)
    for where, fields in extras.items():
        original = apply(original, where, fields)
    [accepted] = parse_request(orjson.dumps(request(original)))
    assert original == orjson.loads(accepted.body)
