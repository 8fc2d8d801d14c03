"""The page's routes: ``/ui``, ``/ui/pipelines/{unique_id}``, their JSON, the login form and
the static files, all under one Content-Security-Policy.

The pages are the package's own files (``relay/ui/static``), read once at start-up; their
script fetches the JSON (``relay.history.tree``'s documents, with ``dry_run`` and
``now_s`` beside them). Building a document runs in a worker thread, so that a page open
on a large history does not hold the event loop that takes runner requests. These routes
are not part of the relay's API document (``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import html
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from relay.errors import error_response
from relay.history import tree
from relay.history.records import Record
from relay.ingest.guard import denied, refuse
from relay.store.outbox import Outbox
from relay.store.writer import OutboxUnavailable
from relay.ui import access

logger = structlog.get_logger(__name__)

# What the list reads: the newest settled records and the newest pending events.
RECENT_SETTLED = 20_000
RECENT_PENDING = 20_000
# The page's script may reach the relay's own origin only; nothing inline, nothing elsewhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "connect-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FORM = "application/x-www-form-urlencoded"

Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of ``relay/ui/static``: its bytes and content type."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Ui:
    """What the routes read: the outbox, whether this is a dry run, the static files."""

    outbox: Outbox
    dry_run: bool
    assets: Mapping[str, Asset]


UI = web.AppKey("ui", Ui)


def load_assets() -> dict[str, Asset]:
    """The package's static files by name (those of a known type)."""
    folder = resources.files("relay.ui") / "static"
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        content_type = _CONTENT_TYPES.get(os.path.splitext(entry.name)[1])
        if content_type is not None:
            found[entry.name] = Asset(entry.read_bytes(), content_type)
    return found


# -- pages


async def get_list_page(request: web.Request) -> web.Response:
    """The list of recent pipelines (``static/list.html``)."""
    return _page(request, "list.html")


async def get_pipeline_page(request: web.Request) -> web.Response:
    """One pipeline's waterfall (``static/pipeline.html``); its script reads the id from
    the path and asks for the JSON beside it."""
    return _page(request, "pipeline.html")


async def get_home_slash(request: web.Request) -> web.Response:
    """``/ui/`` is the list."""
    return _redirect(access.HOME_PATH)


async def get_static(request: web.Request) -> web.Response:
    """A stylesheet, script or icon of the package (never a page: those have their routes)."""
    name = request.match_info["name"]
    asset = request.app[UI].assets.get(name)
    if asset is None or name.endswith(".html"):
        return _secured(refuse(request, 404, f"no such file {request.path}"))
    return _asset_response(asset, "no-cache")


def _page(request: web.Request, name: str) -> web.Response:
    if not access.has_session(request):
        target = f"{access.LOGIN_PATH}?next={quote(request.raw_path, safe='')}"
        return _redirect(target)
    return _asset_response(request.app[UI].assets[name], "no-store")


# -- JSON


async def get_pipelines_json(request: web.Request) -> web.Response:
    """The recent pipelines, newest first (``tree.summaries_as_json``)."""
    if (refused := _refused(request)) is not None:
        return refused
    ui = request.app[UI]
    try:
        records = await ui.outbox.recent_records(settled=RECENT_SETTLED, pending=RECENT_PENDING)
    except OutboxUnavailable as exc:
        return _unavailable(exc)
    body = await asyncio.to_thread(list_document, records, time.time(), ui.dry_run)
    return _json(body)


async def get_pipeline_json(request: web.Request) -> web.Response:
    """One pipeline's tree, critical path and problems (``tree.pipeline_as_json``); 404 for
    an id the history does not hold."""
    if (refused := _refused(request)) is not None:
        return refused
    ui = request.app[UI]
    unique_id = request.match_info["unique_id"]
    try:
        records = await ui.outbox.pipeline_records(unique_id)
    except OutboxUnavailable as exc:
        return _unavailable(exc)
    if not records:
        detail = f"no pipeline {unique_id!r} in the recent history (never seen, or pruned)"
        return _secured(error_response(404, detail))
    body = await asyncio.to_thread(pipeline_document, unique_id, records, time.time(), ui.dry_run)
    return _json(body)


def list_document(records: list[Record], now: float, dry_run: bool) -> bytes:
    """The body of ``GET /ui/pipelines.json``."""
    document = tree.summaries_as_json(tree.summarise(records, now=now))
    return orjson.dumps({"dry_run": dry_run, "now_s": now, **document})


def pipeline_document(unique_id: str, records: list[Record], now: float, dry_run: bool) -> bytes:
    """The body of ``GET /ui/pipelines/{unique_id}.json``."""
    document = tree.pipeline_as_json(tree.build(unique_id, records), now=now)
    return orjson.dumps({"dry_run": dry_run, "now_s": now, **document})


def _refused(request: web.Request) -> web.Response | None:
    """None when the request may read the JSON (a session, or the token in a header)."""
    if access.has_session(request):
        return None
    forbidden = denied(request)
    return None if forbidden is None else _secured(forbidden)


def _unavailable(exc: OutboxUnavailable) -> web.Response:
    logger.error("history unreadable", error=str(exc))
    return _secured(error_response(503, f"the outbox cannot be read: {exc}"))


def _json(body: bytes) -> web.Response:
    response = web.Response(body=body, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return _secured(response)


# -- login


async def get_login(request: web.Request) -> web.Response:
    """The form that takes the ingest token; straight on when none is needed."""
    next_path = access.safe_next(request.query.get("next"))
    if access.has_session(request):
        return _redirect(next_path)
    return _login_form(request, next_path, "", 200)


async def post_login(request: web.Request) -> web.Response:
    """The token from the form's body (never the URL): the session cookie and on to
    ``next``, or the form again (403)."""
    token = access.token_of(request)
    if request.content_type != _FORM:
        return _secured(error_response(415, f"the login form is sent as {_FORM}"))
    try:
        form = await request.post()
    except ValueError:
        return _secured(error_response(400, "the form's body could not be read"))
    next_path = access.safe_next(_text(form.get("next")))
    if token is None:
        return _redirect(next_path)
    if not access.token_matches(request, _text(form.get("token"))):
        logger.info("ui login refused", peer=request.remote)
        return _login_form(request, next_path, "That is not this relay's ingest token.", 403)
    response = _redirect(next_path)
    access.set_session(response, request, token)
    return response


def _login_form(request: web.Request, next_path: str, message: str, status: int) -> web.Response:
    template = request.app[UI].assets["login.html"].body.decode()
    page = template.replace("{next}", html.escape(next_path)).replace(
        "{message}", html.escape(message)
    )
    response = web.Response(text=page, status=status, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return _secured(response)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# -- shared


async def method_not_allowed(request: web.Request) -> web.Response:
    """405 in Datadog's shape, with Allow."""
    allowed = "GET, HEAD, POST" if request.path == access.LOGIN_PATH else "GET, HEAD"
    detail = f"method {request.method} is not allowed on {request.path}; use {allowed}"
    return _secured(refuse(request, 405, detail, headers={"Allow": allowed}))


def _asset_response(asset: Asset, cache: str) -> web.Response:
    response = web.Response(body=asset.body, headers={"Content-Type": asset.content_type})
    response.headers["Cache-Control"] = cache
    return _secured(response)


def _redirect(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    response.headers["Cache-Control"] = "no-store"
    return _secured(response)


def _secured(response: web.Response) -> web.Response:
    response.headers.update(_SECURITY_HEADERS)
    return response


# Each path answers GET (and HEAD), in this order: a pipeline's JSON before its page.
ROUTES: tuple[tuple[str, Handler], ...] = (
    (access.HOME_PATH, get_list_page),
    (access.HOME_PATH + "/", get_home_slash),
    ("/ui/pipelines.json", get_pipelines_json),
    ("/ui/pipelines/{unique_id:[^/]+}.json", get_pipeline_json),
    ("/ui/pipelines/{unique_id:[^/]+}", get_pipeline_page),
    ("/ui/static/{name}", get_static),
)


def configure(app: web.Application, outbox: Outbox, *, dry_run: bool) -> None:
    """Put the page's routes on ``app`` (before its catch-all 404), reading ``outbox``;
    ``dry_run`` says whether the relay sends nothing, which the page shows."""
    app[UI] = Ui(outbox, dry_run, load_assets())
    for path, handler in ROUTES:
        app.router.add_get(path, handler)  # and HEAD
        app.router.add_route("*", path, method_not_allowed)
    app.router.add_get(access.LOGIN_PATH, get_login)
    app.router.add_post(access.LOGIN_PATH, post_login)
    app.router.add_route("*", access.LOGIN_PATH, method_not_allowed)
