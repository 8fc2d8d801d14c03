"""Request bodies for the contract test: valid ones of every level, and mutations of them.

A valid body follows the seed's model (``/api/v2/ci/pipeline``) with optional fields drawn
at random; a mutation then breaks one thing in it: a field missing, null or of the wrong
type, a wrong enum, a bad or out-of-range time, a long string, an odd tag, metric or
parameter, a big number, text in any script. Bodies are plain decoded JSON values.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from relay.testing.samples import event

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
INT64_MAX = 2**63 - 1

# Any Unicode scalar value (no lone surrogates, which are not UTF-8) in short text.
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10)

FINISHED = {
    "pipeline": ["success", "error", "canceled", "skipped", "blocked"],
    "stage": ["success", "error", "canceled", "skipped"],
    "job": ["success", "error", "canceled", "skipped"],
    "step": ["success", "error"],
}
KINDS = ("pipeline", "running_pipeline", "stage", "job", "running_job", "step")


def rfc3339(epoch_s: float, style: str) -> str:
    """``epoch_s`` as RFC3339 text in one of the forms runners send."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    if style == "offset":  # the same instant in another zone
        moment = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
        return moment.isoformat(timespec="milliseconds")
    if style == "seconds":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == "nanoseconds":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    if style == "lower":
        return moment.strftime("%Y-%m-%dt%H:%M:%S.%fz")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


TIME_STYLES = st.sampled_from(["z", "offset", "seconds", "nanoseconds", "lower"])


@st.composite
def times(draw: st.DrawFn, running: bool) -> dict[str, str]:
    """A start and (unless running) an end: the end in the last 17 hours or ahead of now, the
    run at most 300 days long."""
    now = time.time()
    end = now - draw(st.floats(-HOUR_S, 17 * HOUR_S))
    # At least a second long: a time written without its fraction is up to 1 s earlier.
    start = end - draw(st.one_of(st.floats(1, HOUR_S), st.floats(1, 300 * DAY_S)))
    style = draw(TIME_STYLES)
    result = {"start": rfc3339(start, style)}
    if not running:
        result["end"] = rfc3339(end, draw(TIME_STYLES))
    return result


def _optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


GIT = st.builds(
    lambda required, extra, ref: required | extra | ref,
    st.fixed_dictionaries({"repository_url": TEXT, "sha": TEXT, "author_email": TEXT}),
    _optional(
        dict.fromkeys(
            (
                "author_name",
                "author_time",
                "commit_time",
                "committer_email",
                "committer_name",
                "default_branch",
                "message",
            ),
            TEXT,
        )
    ),
    st.one_of(
        st.just({}), st.builds(lambda b: {"branch": b}, TEXT), st.builds(lambda t: {"tag": t}, TEXT)
    ),
)
ERROR = _optional(
    {
        "domain": st.sampled_from(["provider", "user", "unknown"]),
        "message": st.one_of(TEXT, st.integers(0, 5000).map(lambda n: "m" * n)),
        "stack": TEXT,
        "type": st.one_of(TEXT, st.integers(0, 100).map(lambda n: "t" * n)),
    }
)
NODE = _optional(
    {"hostname": TEXT, "labels": st.lists(TEXT, max_size=3), "name": TEXT, "workspace": TEXT}
)
TAG = st.builds(
    lambda k, v: f"{k}:{v}", WORD, st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
)
METRIC = st.builds(
    lambda k, v: f"{k}:{v}",
    WORD,
    st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
    ),
)
PIPELINE_REF = st.builds(lambda i, u: {"id": i} | u, TEXT, _optional({"url": TEXT}))
COMMON = {
    "error": ERROR,
    "git": GIT,
    "node": NODE,
    "metrics": st.lists(METRIC, max_size=3),
    "tags": st.lists(TAG, max_size=3),
    "parameters": st.dictionaries(TEXT, TEXT, max_size=3),
}
QUEUE_TIME = st.one_of(st.integers(0, 10**6), st.just(INT64_MAX))
CHILD = {"id": TEXT, "name": TEXT, "pipeline_name": TEXT, "pipeline_unique_id": TEXT}
OPTIONAL = {
    "pipeline": COMMON
    | {
        "pipeline_id": TEXT,
        "is_manual": st.booleans(),
        "is_resumed": st.booleans(),
        "parent_pipeline": PIPELINE_REF,
        "previous_attempt": PIPELINE_REF,
        "queue_time": QUEUE_TIME,
    },
    "stage": COMMON | {"dependencies": st.lists(TEXT, max_size=3), "queue_time": QUEUE_TIME},
    "job": COMMON
    | {
        "dependencies": st.lists(TEXT, max_size=3),
        "queue_time": QUEUE_TIME,
        "stage_id": TEXT,
        "stage_name": TEXT,
    },
    "step": COMMON | dict.fromkeys(("url", "job_id", "job_name", "stage_id", "stage_name"), TEXT),
}


@st.composite
def resources(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A valid resource of ``kind`` (one of KINDS), optional fields drawn at random."""
    running = kind.startswith("running_")
    level = kind.removeprefix("running_")
    required: dict[str, st.SearchStrategy[Any]] = (
        {"unique_id": TEXT, "name": TEXT, "url": TEXT, "partial_retry": st.booleans()}
        if level == "pipeline"
        else CHILD | ({"url": TEXT} if level == "job" else {})
    )
    resource = {"level": level} | draw(st.fixed_dictionaries(required))
    resource["status"] = "running" if running else draw(st.sampled_from(FINISHED[level]))
    resource |= draw(times(running))
    resource |= draw(_optional(OPTIONAL[level]))
    return resource


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event (an item of ``data``) of any level."""
    attributes = {"resource": draw(resources(draw(st.sampled_from(KINDS))))}
    attributes |= draw(_optional({"env": TEXT, "provider_name": TEXT, "service": TEXT}))
    event: dict[str, Any] = {"attributes": attributes}
    if draw(st.booleans()):
        event["type"] = "cipipeline_resource_request"
    return event


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request body: one event as an object, or 1 to 4 in an array."""
    if draw(st.booleans()):
        return {"data": draw(events())}
    return {"data": draw(st.lists(events(), min_size=1, max_size=4))}


# --- mutations --------------------------------------------------------------------------

ANY_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
ANY_VALUE = st.one_of(
    ANY_SCALAR, st.lists(ANY_SCALAR, max_size=2), st.dictionaries(TEXT, ANY_SCALAR, max_size=2)
)
BAD_TIMES = st.one_of(
    st.sampled_from(
        [
            "2024-01-01",
            "2024-01-01T10:00:00",
            "2024-01-01 10:00:00Z",
            "2024-01-01T10:00:00+0100",
            "2024-01-01T10:00Z",
            "20240101T100000Z",
            "yesterday",
            "2024-06-30T23:59:60Z",
            "2024-02-30T10:00:00Z",
            "2024-01-01T24:00:00Z",
            "Mon, 01 Jan 2024 10:00:00 GMT",
            "",
        ]
    ),
    TEXT,
    st.integers(0, 2**40),
)
ODD_TAGS = st.sampled_from(["nocolon", ":value", "key:", "k:v:w", "ключ:значение", "", " : "])
ODD_METRICS = st.sampled_from(
    ["k:abc", "k:1e5", "k:NaN", "k:inf", "k: 1", "k:-0.5", "k:01", "k:1.", "k:.5", "k:1e400", "k"]
)
BIG_NUMBERS = st.sampled_from(
    [INT64_MAX, INT64_MAX + 1, 2**64, -1, 1.5, 1.0, 1e300, 10**30, -(2**63)]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (keys and indices), in document order."""
    found: list[tuple[Any, ...]] = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, inner in items:
        found.append((*prefix, key))
        found.extend(_paths(inner, (*prefix, key)))
    return found


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


def _resources(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data")
    found = data if isinstance(data, list) else [data]
    return [
        e["attributes"]["resource"]
        for e in found
        if isinstance(e, dict)
        and isinstance(e.get("attributes"), dict)
        and isinstance(e["attributes"].get("resource"), dict)
    ]


@st.composite
def mutate(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with one thing changed (a copy)."""
    body = copy.deepcopy(body)
    # Choices from a Random that hypothesis seeds (so runs replay), about equally often
    # each: the run meets every kind of mutation, at every level.
    pick = draw(st.randoms(use_true_random=False)).choice
    kind = pick(
        [
            "delete",
            "null",
            "retype",
            "enum",
            "time",
            "span",
            "long",
            "tags",
            "metrics",
            "parameters",
            "number",
            "git",
            "envelope",
            "unknown",
        ]
    )
    resources_ = _resources(body)
    paths = [path for path in _paths(body) if path != ("data",)]  # "envelope" does data
    if kind in ("delete", "null", "retype") and paths:
        path = pick(paths)
        parent = _parent(body, path)
        if kind == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = None if kind == "null" else draw(ANY_VALUE)
        return body
    if not resources_:
        return body
    resource = pick(resources_)
    if kind == "enum":
        field = draw(st.sampled_from(["status", "level"]))
        resource[field] = draw(
            st.one_of(TEXT, st.sampled_from(["running", "blocked", "pipeline", "job", "Success"]))
        )
    elif kind == "time":
        resource[draw(st.sampled_from(["start", "end"]))] = draw(BAD_TIMES)
    elif kind == "span":
        now = time.time()
        end, start = pick(
            [
                (now - 19 * HOUR_S, now - 20 * HOUR_S),  # ended too long ago
                (now - 60, now),  # ends before it starts
                (now - 60, now - 400 * DAY_S),  # longer than a year
            ]
        )
        style = draw(TIME_STYLES)
        resource["start"] = rfc3339(start, style)
        resource["end"] = rfc3339(end, style)
        if resource.get("status") == "running":  # a running resource's end is not read
            resource["status"] = "success"
    elif kind == "long":
        target, field, size = draw(
            st.sampled_from(
                [("error", "message", 5001), ("error", "type", 101), (None, "name", 20000)]
            )
        )
        text = draw(st.sampled_from(["x", "é", "𝄞"])) * size
        if target is None:
            resource[field] = text
        else:
            resource.setdefault(target, {})
            if isinstance(resource[target], dict):
                resource[target][field] = text
    elif kind == "tags":
        resource["tags"] = draw(
            st.lists(st.one_of(ODD_TAGS, TAG, ANY_SCALAR), min_size=1, max_size=3)
        )
    elif kind == "metrics":
        resource["metrics"] = draw(
            st.lists(st.one_of(ODD_METRICS, METRIC, ANY_SCALAR), min_size=1, max_size=3)
        )
    elif kind == "parameters":
        resource["parameters"] = draw(st.dictionaries(TEXT, ANY_VALUE, min_size=1, max_size=3))
    elif kind == "number":
        resource["queue_time"] = draw(BIG_NUMBERS)
    elif kind == "git":
        git = {"repository_url": "u", "sha": "s", "author_email": "e"}
        resource["git"] = git | {"tag": draw(TEXT), "branch": draw(TEXT)}
    elif kind == "envelope":
        data = body.get("data")
        choice = pick(["null item", "empty", "scalar", "empty object", "missing", "no attributes"])
        if choice == "missing":
            body.pop("data", None)
        elif choice == "empty":
            body["data"] = []
        elif choice == "scalar":
            body["data"] = draw(ANY_SCALAR)
        elif choice == "null item":
            body["data"] = [*(data if isinstance(data, list) else [data]), None]
        elif choice == "empty object":
            body["data"] = {}
        else:
            for event in data if isinstance(data, list) else [data]:
                if isinstance(event, dict):
                    event.pop("attributes", None)
    else:  # an unknown field, which both sides ignore
        resource[draw(WORD).upper()] = draw(ANY_VALUE)
    return body


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body, or one with 1 to 3 mutations (mostly one: one more seldom leaves a body
    that the client models still accept)."""
    body = draw(valid_bodies())
    for _ in range(draw(st.sampled_from([1, 1, 0, 2, 1, 3]))):
        body = draw(mutate(body))
    return body


def rule_examples() -> list[dict[str, Any]]:
    """One body for each documented difference (tests.contract_rules), in its order: each
    is valid but for the one rule, so the run meets every rule whatever else it draws."""
    now = time.time()

    def body(**fields: Any) -> dict[str, Any]:
        return {"data": event("job", **fields)}

    git = {"repository_url": "u", "sha": "s", "author_email": "e"}
    return [
        body(name=None),
        body(start="2024-01-01T10:00:00"),
        body(start=rfc3339(now - 60, "z"), end=rfc3339(now - 120, "z")),
        body(start=rfc3339(now - 400 * DAY_S, "z")),
        body(start=rfc3339(now - 20 * HOUR_S, "z"), end=rfc3339(now - 19 * HOUR_S, "z")),
        body(tags=["nocolon"]),
        body(metrics=["k:abc"]),
        body(git=git | {"tag": "v1", "branch": "main"}),
        body(queue_time=INT64_MAX + 1),
        {},
        {"data": []},
        {"data": {"type": "cipipeline_resource_request"}},
        body(parameters=[]),
        {"data": [[None]]},  # null again: an event given as a list of nulls
    ]
