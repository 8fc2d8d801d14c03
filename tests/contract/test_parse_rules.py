"""The JSON rules of a request body: one parser, the same answer whatever else the body holds."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from relay.contract.body import MAX_DEPTH
from relay.contract.schema import InvalidRequest, parse_request
from relay.testing.samples import LEVELS, event, request

# Each poison is a JSON text (or near-JSON) put into an unknown field of a valid event.
POISONS = [
    pytest.param(b'"\\ud800"', "surrogate", id="lone-high-surrogate"),
    pytest.param(b'"a\\udc00b"', "surrogate", id="lone-low-surrogate"),
    pytest.param(b'"\\udc00\\ud800"', "surrogate", id="surrogates-reversed"),
    pytest.param(b"1e400", "infinity", id="overflow-to-infinity"),
    pytest.param(b"-1e400", "infinity", id="overflow-to-minus-infinity"),
    pytest.param(b"NaN", "not valid JSON", id="nan"),
    pytest.param(b"Infinity", "not valid JSON", id="infinity-literal"),
    pytest.param(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, f"{MAX_DEPTH} levels", id="too-deep"),
]

# What else the body holds: nothing special, a run of 19 digits inside a string, an integer
# beyond 64 bits elsewhere, a non-ASCII text elsewhere.
COMPANIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"metrics": ["m:12345678901234567890"]}, id="19-digit-string"),
    pytest.param({"build_number": 2**70}, id="big-integer"),
    pytest.param({"note": "café ☕"}, id="non-ascii"),
]


def body_with(raw: bytes, companion: dict[str, Any], kind: str = "job") -> bytes:
    """A one-event request whose resource holds ``raw`` (JSON text) under ``x``."""
    document = request(event(kind, x="RAW-PLACEHOLDER"))
    document["data"]["attributes"]["resource"] |= companion
    # The standard library writes integers beyond 64 bits, which orjson does not.
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return text.replace(b'"RAW-PLACEHOLDER"', raw)


def only_problem(body: bytes) -> str:
    """The single problem ``parse_request`` gives for ``body``, which it must refuse."""
    with pytest.raises(InvalidRequest) as refused:
        parse_request(body)
    [problem] = refused.value.problems
    return problem


@pytest.mark.parametrize(("raw", "says"), POISONS)
@pytest.mark.parametrize("companion", COMPANIONS)
def test_poison_is_refused_whatever_else_the_body_holds(
    raw: bytes, says: str, companion: dict[str, Any]
) -> None:
    """Lone surrogates, non-finite numbers and nesting too deep get one 400 problem, always."""
    problem = only_problem(body_with(raw, companion))
    assert problem.startswith("body is not valid JSON: ")
    assert says in problem


@pytest.mark.parametrize("companion", COMPANIONS)
def test_byte_order_mark_is_refused_whatever_else_the_body_holds(
    companion: dict[str, Any],
) -> None:
    """A body that starts with a UTF-8 byte order mark is refused, whatever else it holds."""
    problem = only_problem(b"\xef\xbb\xbf" + body_with(b"1", companion))
    assert "byte order mark" in problem


@pytest.mark.parametrize("companion", COMPANIONS)
def test_nesting_at_the_limit_is_accepted(companion: dict[str, Any]) -> None:
    """A body nested exactly MAX_DEPTH levels deep is accepted and its event stored as sent."""
    # The body, data (an object), attributes and resource are 4 levels; x holds the rest.
    inner = MAX_DEPTH - 4
    raw = b"[" * inner + b"]" * inner
    body = body_with(raw, companion)
    [accepted] = parse_request(body)
    assert raw in accepted.body


@pytest.mark.parametrize("companion", COMPANIONS)
def test_nesting_one_past_the_limit_is_refused(companion: dict[str, Any]) -> None:
    """A body nested MAX_DEPTH + 1 levels deep is refused with a problem naming the limit."""
    inner = MAX_DEPTH - 3
    problem = only_problem(body_with(b"[" * inner + b"]" * inner, companion))
    assert f"nested more than {MAX_DEPTH} levels" in problem


def test_deep_objects_count_like_deep_arrays() -> None:
    """Objects count toward the depth limit as arrays do."""
    inner = MAX_DEPTH - 3
    raw = b'{"a":' * inner + b"1" + b"}" * inner
    assert f"nested more than {MAX_DEPTH} levels" in only_problem(body_with(raw, {}))


@pytest.mark.parametrize(
    "number",
    [2**64, 2**64 + 1, -(2**63) - 1, 10**30 + 7, -(10**40) - 3, 2**64 - 1, -(2**63)],
)
@pytest.mark.parametrize("companion", COMPANIONS)
def test_integers_of_any_size_are_stored_exactly(number: int, companion: dict[str, Any]) -> None:
    """An integer in an unknown field is stored digit for digit, whatever else the body holds."""
    [accepted] = parse_request(body_with(str(number).encode(), companion))
    stored = json.loads(accepted.body)["attributes"]["resource"]["x"]
    assert (int, number) == (type(stored), stored)


def test_stored_body_is_the_events_original_bytes() -> None:
    """Each stored body is its event's bytes exactly as sent: spacing, escapes, number forms."""
    events = [
        b'{ "attributes" : { "resource" : RESOURCE , "extra" : [ 1.0 , 1E2 , -0 , 0.10 ] } }',
        b'{"attributes":{"resource":RESOURCE},\n "note":"caf\\u00e9 \\/ \\"q\\" \\ud83d\\ude00"}',
        b'{"attributes":{"resource":RESOURCE},"big":123456789012345678901234567890}',
    ]
    kinds = ["pipeline", "stage", "step"]
    originals = [
        text.replace(b"RESOURCE", orjson.dumps(event(kind)["attributes"]["resource"]))
        for text, kind in zip(events, kinds, strict=True)
    ]
    body = b'{"data" :\n [ ' + b" ,\n\t".join(originals) + b" ] }"
    assert originals == [accepted.body for accepted in parse_request(body)]


def test_stored_bodies_are_strict_json_equal_to_what_was_validated() -> None:
    """Every stored body parses as strict JSON to the event the request held."""
    originals = [event(LEVELS[i % len(LEVELS)], note="é\u2028\U0001f600") for i in range(30)]
    for accepted, original in zip(
        parse_request(orjson.dumps(request(*originals))), originals, strict=True
    ):
        assert original == orjson.loads(accepted.body)


def test_last_data_key_is_the_one_validated_and_stored() -> None:
    """With data given twice, the last one is validated and stored, as JSON parsers read it."""
    first, last = event("job"), event("stage")
    body = b'{"data":' + orjson.dumps(first) + b',"data":' + orjson.dumps(last) + b"}"
    assert [orjson.dumps(last)] == [accepted.body for accepted in parse_request(body)]
    broken = b'{"data":' + orjson.dumps(first) + b',"data":{"attributes":1}}'
    assert "data.attributes" in only_problem(broken)


def test_escaped_data_key_is_the_data_key() -> None:
    """A data key written with escapes (d\\u0061ta) is the data key for parsing and storing."""
    original = event("step")
    body = b'{"d\\u0061ta":[' + orjson.dumps(original) + b"]}"
    assert [orjson.dumps(original)] == [accepted.body for accepted in parse_request(body)]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"1],[2", id="unbalanced"),
        pytest.param(b"]", id="closing-bracket"),
        pytest.param(b'{"data":[]}]', id="extra-closer"),
        pytest.param(b'{"data":[]} {}', id="two-documents"),
    ],
)
def test_broken_bodies_are_not_json(body: bytes) -> None:
    """Bodies that are not one JSON document are refused as not valid JSON."""
    assert only_problem(body).startswith("body is not valid JSON: ")
