"""Answers in Datadog's error shape (``relay.intake.error_body``), as aiohttp responses."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from relay.intake import error_body


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
