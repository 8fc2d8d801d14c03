"""Datadog's error shape: ``{"errors": [{"status", "title", "detail"}]}``, built in one place."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

import orjson
from aiohttp import web


def error_body(status: int, details: Iterable[str]) -> bytes:
    """The JSON body Datadog's API answers with for ``status``, one entry per detail."""
    title = HTTPStatus(status).phrase
    errors = [{"status": str(status), "title": title, "detail": d} for d in details]
    return orjson.dumps({"errors": errors})


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
