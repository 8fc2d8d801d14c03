"""``ci-relay status``: ask the running relay for ``GET /status``, print it, exit by its verdict.

The relay is found through the settings ``serve`` reads, or at ``--url``. The ingest token
goes to that relay and nowhere else: no proxy, no redirect followed. What the document
means, and how it is printed, is ``relay.ops.status``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from relay.config import ServerSettings, check_http_url, load_settings
from relay.contract.exceptions import RelayError, UserError
from relay.contract.local import DEFAULT_RELAY_URL
from relay.keyfiles import KeyFile
from relay.ops.status import EXIT_UNREACHABLE, exit_status, render


class Unreachable(RelayError):
    """No relay answers at the URL (refused, timed out, an HTTP error, not JSON);
    ``status`` is the HTTP error's status when it answered one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def status(config: Path | None, url: str | None, as_json: bool, timeout_s: float) -> int:
    """GET /status of the running relay: a summary or the JSON, and the verdict's status."""
    server = load_settings(config).server
    address = relay_address(server, url)
    token = KeyFile.ingest_token(server)
    try:
        document = fetch(address, token.value, timeout_s)
    except Unreachable as exc:
        print(f"ci-relay: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(
        orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
        if as_json
        else render(document, address)
    )
    return exit_status(document)


def relay_address(server: ServerSettings, given: str | None) -> str:
    """Where to ask: ``--url`` once checked, else where ``server`` listens, seen from here."""
    if given:
        return _checked_url(given)
    if server.port == 0:
        raise UserError("server.port is 0 (chosen at start): give the relay's --url")
    return server.local_url


def fetch(url: str, token: str | None, timeout_s: float) -> Any:
    """The /status document of the relay at ``url``, asked with ``token`` (``ask``)."""
    return ask(url, "/status", token, timeout_s)


def ask(url: str, path: str, token: str | None, timeout_s: float, method: str = "GET") -> Any:
    """The JSON answer of the relay at ``url`` to ``method path``, asked with ``token``
    through ``direct_opener``.

    Unreachable when no relay answers it (with the status of an HTTP error); UserError when
    the relay requires its token and this command has none (or the wrong one).
    """
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = b"" if method == "POST" else None
    asking = urllib.request.Request(f"{url}{path}", data, headers, method=method)  # noqa: S310
    try:
        with direct_opener().open(asking, timeout=timeout_s) as answer:
            return orjson.loads(answer.read())
    except urllib.error.HTTPError as exc:  # before OSError: it is one
        if exc.code == 403:
            raise UserError(
                f"the relay at {url} refuses the request: it requires its ingest token, "
                "which this command reads from server.ingest_token(_file) of --config"
            ) from None
        message = f"no relay answers at {url}: answered {exc.code} {exc.reason}"
        raise Unreachable(message, exc.code) from None
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(f"no relay answers at {url}: {reason}") from None


def direct_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that carries the token to the relay named and nowhere else: no proxy
    (HTTP(S)_PROXY is for the internet, and a proxy would see the token of a plain-HTTP
    request), and no redirect followed (urllib would resend the Authorization header to
    whatever origin a 3xx names; the 3xx is reported instead)."""

    class RefuseRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_: object, **__: object) -> None:
            return None  # urllib then raises the 3xx as an HTTPError

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), RefuseRedirects())


def _checked_url(given: str) -> str:
    """``--url`` once checked: http(s), a host and a port a request can reach, and no login
    (the relay takes its token as a header, read from --config); messages quote none of it."""
    try:
        parts = check_http_url(given.strip(), ("http", "https"), DEFAULT_RELAY_URL)
    except ValueError as exc:
        raise UserError(f"--url {exc}") from None
    if "@" in parts.netloc:
        raise UserError(
            "--url takes no login: the relay's token is read from "
            "server.ingest_token(_file) of --config"
        )
    return given.strip().rstrip("/")
