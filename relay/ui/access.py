"""Who may see the page and its JSON: the ingest token's holders, or anyone without one.

With an ingest token set (``server.ingest_token``), the JSON answers a request that carries
the token as ingest takes it (``DD-API-KEY`` or ``Authorization: Bearer``), or the session
cookie; the pages need the cookie, which ``POST /ui/login`` sets from the token typed into
a form, so that the token never travels in a URL nor shows in a log. The cookie holds an
HMAC of a fixed label keyed with the token, never the token: it is the same for every
login, checked in constant time, and stops working when the token changes (the file is
re-read while the relay runs). Without a token, everything is open, like ingest.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from relay.ingest.guard import INGEST_TOKEN
from relay.keyfiles import same_secret

COOKIE = "ci_relay_ui"
_LABEL = b"ci-relay ui session v1"
LOGIN_PATH = "/ui/login"
HOME_PATH = "/ui"


def token_of(request: web.Request) -> str | None:
    """The relay's ingest token now, or ``None`` when it has none."""
    return request.app[INGEST_TOKEN].value


def session_value(token: str) -> str:
    """The cookie's value for ``token``: HMAC-SHA256 of a fixed label, keyed with the token."""
    return hmac.new(token.encode(), _LABEL, hashlib.sha256).hexdigest()


def has_session(request: web.Request) -> bool:
    """True when the relay has no token, or the request's cookie matches the current one."""
    token = token_of(request)
    if token is None:
        return True
    given = request.cookies.get(COOKIE)
    return given is not None and same_secret(given, session_value(token))


def token_matches(request: web.Request, given: str) -> bool:
    """True when ``given`` is the relay's token (constant time); False without a token."""
    token = token_of(request)
    return token is not None and same_secret(given, token)


def set_session(response: web.StreamResponse, request: web.Request, token: str) -> None:
    """Give the browser the session cookie: HttpOnly, SameSite=Strict, for /ui only."""
    response.set_cookie(
        COOKIE,
        session_value(token),
        path=HOME_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of the page itself, else the list."""
    if not value or not value.startswith(HOME_PATH):
        return HOME_PATH
    rest = value[len(HOME_PATH) :]
    if rest and rest[0] not in "/?":
        return HOME_PATH
    if any(c == "\\" or c.isspace() or ord(c) < 0x20 for c in value):
        return HOME_PATH
    return value
