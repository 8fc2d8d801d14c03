"""Where the relay deliberately differs from Datadog's client models, in one place.

Each rule names one check the relay makes and the client's models
(``tests.datadog_models``) do not, and recognises the problem the relay lists for it.
docs/contract.md has one row per rule, with the reason; tests/contract/test_contract.py allows a
disagreement only when every problem the relay lists is one of these, and checks that the
table and this list name the same rules. The relay is never laxer than the client models,
so there are no rules in that direction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_LEVEL = "must be an object whose level is one of"
_SEGMENT = re.compile(r"\.([A-Za-z_]+)|\[(\d+)\]")
MISSING = object()  # what a path that leads to no value leads to


@dataclass(frozen=True)
class Problem:
    """One problem of a relay refusal: its JSON path, its message, and the body it is about."""

    path: str
    message: str
    document: Any

    def value(self) -> Any:
        """The value at ``path`` in the body, or MISSING."""
        head, _, rest = self.path.partition(".")
        node: Any = self.document
        index = re.fullmatch(r"data\[(\d+)\]", head)
        node = node.get("data", MISSING) if isinstance(node, dict) else MISSING
        if index is not None:
            position = int(index.group(1))
            node = node[position] if isinstance(node, list) and position < len(node) else MISSING
        for name, number in _SEGMENT.findall("." + rest if rest else ""):
            if name and isinstance(node, dict):
                node = node.get(name, MISSING)
            elif number and isinstance(node, list) and int(number) < len(node):
                node = node[int(number)]
            else:
                return MISSING
        return node


@dataclass(frozen=True)
class Rule:
    """A check of the relay's that the client models lack, and how its problem reads."""

    name: str
    matches: Callable[[Problem], bool]


def _says(*fragments: str) -> Callable[[Problem], bool]:
    return lambda problem: any(fragment in problem.message for fragment in fragments)


def _null(problem: Problem) -> bool:
    # The relay names a short offending value ("(got null)"); otherwise the path leads to it.
    # A null level is reported on the resource, which the level selects the model of.
    value = problem.value()
    if problem.message.endswith("(got null)") or value is None:
        return True
    if isinstance(value, list) and value and all(item is None for item in value):
        # An event given as a list of nulls: the client's deserialiser reaches only nulls,
        # whose type it does not check (seen: {"data": [[null]]}).
        return True
    if problem.path.endswith(".end") and problem.message == "Field required":
        # A null status does not say "running": the relay reads the event as finished.
        resource = Problem(problem.path.removesuffix(".end"), "", problem.document).value()
        return isinstance(resource, dict) and resource.get("status", "") is None
    return _LEVEL in problem.message and isinstance(value, dict) and value.get("level") is None


def _beyond_int64(problem: Problem) -> bool:
    value = problem.value()
    return type(value) is int and not INT64_MIN <= value <= INT64_MAX


def _on(field: str, message: str) -> Callable[[Problem], bool]:
    return lambda problem: f".{field}[" in problem.path and message in problem.message


RULES = (
    Rule("null", _null),
    Rule("rfc3339", _says("must be an RFC3339 time with a time zone")),
    Rule("end_before_start", _says("is before start")),
    Rule("longer_than_a_year", _says("is more than 1 year after start")),
    Rule("ended_over_18h_ago", _says("is more than 18 hours in the past")),
    Rule("tag_key_value", _on("tags", "must follow the key:value pattern")),
    Rule("metric_key_number", _on("metrics", "must follow the key:value pattern")),
    Rule("tag_and_branch", _says("has both tag and branch")),
    Rule("int64", _beyond_int64),
    Rule("data_required", lambda p: p.path == "data" and p.message == "field required"),
    Rule("data_1_to_1000", lambda p: p.path == "data" and " per request" in p.message),
    Rule(
        "attributes_required", lambda p: p.path.endswith("attributes") and "required" in p.message
    ),
    Rule(
        "empty_array_as_object",
        lambda p: p.value() == [] and "Input should be a valid dictionary" in p.message,
    ),
)
MORE_PROBLEMS = "... and more problems"


def explain(detail: str, document: Any) -> Rule | None:
    """The rule behind one problem the relay listed (``path: message``), if any."""
    path, _, message = detail.partition(": ")
    problem = Problem(path, message, document)
    return next((rule for rule in RULES if rule.matches(problem)), None)
