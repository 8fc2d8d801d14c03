"""Bounded problem collection: a request lists at most 100 problems, then validation stops.

A list or map of a request can hold millions of items. Validating it item by item with
pydantic would build an error object for every bad item (gigabytes for a 5 MiB body of bad
tags); the validators here examine the items themselves, report bad ones while the
request's ``Budget`` lasts, and stop at the first bad item past it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, PlainValidator, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_LISTED_PROBLEMS = 100

# (error type, message) of one bad item, or None when it is fine.
Problem = tuple[str, str] | None


@dataclass(slots=True)
class Budget:
    """How many more problems the request may list, and whether one was found past that."""

    left: int = MAX_LISTED_PROBLEMS
    more: bool = False


def budget_of(info: ValidationInfo) -> Budget:
    """The request's budget, from the validation context (a fresh one outside a request)."""
    context = info.context
    return context["budget"] if context and "budget" in context else Budget()


def _report(
    pairs: Iterable[tuple[int | str, Any]], check: Callable[[Any], Problem], info: ValidationInfo
) -> None:
    budget = budget_of(info)
    errors: list[InitErrorDetails] = []
    for loc, item in pairs:
        problem = check(item)
        if problem is None:
            continue
        if budget.left <= 0:
            budget.more = True  # the request is refused anyway: looking further is wasted work
            break
        budget.left -= 1
        errors.append(InitErrorDetails(type=PydanticCustomError(*problem), loc=(loc,), input=item))
    if errors:
        # pydantic adds the field's path to each of these, as for its own item errors.
        raise ValidationError.from_exception_data("items", errors)


def _list_of(check: Callable[[Any], Problem], item: Any = str) -> PlainValidator:
    def validate(value: Any, info: ValidationInfo) -> Any:
        if type(value) is not list:
            raise PydanticCustomError("list_type", "Input should be a valid list")
        _report(enumerate(value), check, info)
        return value

    # The type the JSON Schema (GET /openapi.json) shows; validation is ``validate``'s.
    return PlainValidator(validate, json_schema_input_type=list[item])


def _map_of(check: Callable[[Any], Problem]) -> PlainValidator:
    def validate(value: Any, info: ValidationInfo) -> Any:
        if type(value) is not dict:
            raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
        _report(value.items(), check, info)
        return value

    return PlainValidator(validate, json_schema_input_type=dict[str, str])


# ASCII: to Python's \d and float(), "1٣" (an Arabic-Indic three) is the number 13; to the
# intake, as to JSON, it is no number.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_NOT_A_STRING = ("string_type", "Input should be a valid string")


def string_problem(value: Any) -> Problem:
    """A string item (labels, dependencies, parameter values)."""
    return None if type(value) is str else _NOT_A_STRING


def tag_problem(value: Any) -> Problem:
    """A ``key:value`` tag."""
    if type(value) is not str:
        return ("tag", "must be a string")
    key, sep, rest = value.partition(":")
    if not (key and sep and rest):
        return ("tag", "must follow the key:value pattern")
    return None


def metric_problem(value: Any) -> Problem:
    """A ``key:number`` metric."""
    problem = tag_problem(value)
    if problem is not None:
        return ("metric", problem[1])
    number = value.partition(":")[2]
    if not _NUMBER.fullmatch(number) or not math.isfinite(float(number)):
        return ("metric", "must follow the key:value pattern with a numeric value")
    return None


# The patterns of tag_problem and metric_problem, for the JSON Schema.
_TAG_PATTERN = r"^[^:]+:[\s\S]+$"
_METRIC_PATTERN = r"^[^:]+:-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"

Strings = Annotated[list[str], _list_of(string_problem)]
Tags = Annotated[list[str], _list_of(tag_problem, Annotated[str, Field(pattern=_TAG_PATTERN)])]
Metrics = Annotated[
    list[str], _list_of(metric_problem, Annotated[str, Field(pattern=_METRIC_PATTERN)])
]
StringMap = Annotated[dict[str, str], _map_of(string_problem)]
