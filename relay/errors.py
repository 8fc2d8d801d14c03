"""Answers in Datadog's error shape (``relay.contract.intake.error_body``), as aiohttp responses."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

# typing's TypedDict is not enough for pydantic before Python 3.12 (GET /openapi.json).
from typing_extensions import TypedDict

from relay.contract.intake import error_body


class ErrorObject(TypedDict):
    """One problem: the status as a string, its reason phrase, and what is wrong."""

    status: str
    title: str
    detail: str


class ErrorBody(TypedDict):
    """Datadog's error shape, the body of every refusal (``relay.contract.intake.error_body``)."""

    errors: list[ErrorObject]


def error_response(
    status: int, *details: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An aiohttp response in Datadog's error shape."""
    return web.Response(
        status=status,
        body=error_body(status, details or (HTTPStatus(status).description,)),
        content_type="application/json",
        headers=headers,
    )
