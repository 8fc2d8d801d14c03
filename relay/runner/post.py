"""Sending a request body to the relay, with the standard library (quick to import)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from relay.intake import PIPELINE_PATH

# The address `ci-relay serve` listens on by default (relay.config's server defaults).
DEFAULT_RELAY_URL = "http://127.0.0.1:8780"
RELAY_URL_VARIABLE = "CI_RELAY_URL"
# The relay's ingest token (server.ingest_token), for a relay that listens beyond loopback.
RELAY_TOKEN_VARIABLE = "CI_RELAY_TOKEN"  # noqa: S105 - the name of a variable
_MAX_ANSWER_BYTES = 64 * 1024


class NotSent(Exception):
    """The relay was not reached, or did not take the event; the message says why."""


def relay_url(flag: str | None, env: Mapping[str, str]) -> str:
    """Where to post: the flag, else ``$CI_RELAY_URL``, else the local relay's default.

    A base URL gets the intake's path; a URL that already has a path is used as is.
    """
    url = flag or env.get(RELAY_URL_VARIABLE) or DEFAULT_RELAY_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"relay URL {url!r} is not an http(s) URL such as {DEFAULT_RELAY_URL}")
    if parts.path in ("", "/"):
        return url.rstrip("/") + PIPELINE_PATH
    return url


def relay_token(env: Mapping[str, str]) -> str | None:
    """The ingest token of ``$CI_RELAY_TOKEN`` (a file's final newline dropped), or None."""
    return env.get(RELAY_TOKEN_VARIABLE, "").strip() or None


def post(url: str, body: bytes, timeout_s: float, token: str | None = None) -> None:
    """POST ``body`` to ``url``, with the ingest ``token`` if any; return once the relay
    answered 2xx, else raise NotSent."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["DD-API-KEY"] = token  # where the relay, as Datadog, looks for a key
    request = urllib.request.Request(  # noqa: S310 - relay_url allows http(s) only
        url, data=body, method="POST", headers=headers
    )
    # No proxy: the relay runs next to the job, and a job's HTTP(S)_PROXY is for the internet.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            answer.read(_MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        detail = _details(exc.read(_MAX_ANSWER_BYTES))
        raise NotSent(f"the relay at {url} answered {exc.code}{detail}") from None
    except TimeoutError:
        raise NotSent(f"the relay at {url} did not answer within {timeout_s:g} s") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotSent(f"cannot reach the relay at {url}: {reason}") from None


def _details(answer: bytes) -> str:
    """The details of an answer in Datadog's error shape, as ``: a; b``."""
    try:
        errors = json.loads(answer)["errors"]
        details = [str(error["detail"]) for error in errors]
    except (ValueError, KeyError, TypeError):
        return ""
    return ": " + "; ".join(details) if details else ""
