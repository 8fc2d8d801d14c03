"""Sending a request body to the relay, with the standard library (quick to import).

One deadline bounds the whole exchange: connecting (and the TLS handshake), sending, and
reading the answer. Each socket read and write is given only what is left of it, so a relay
that trickles its answer a byte at a time cannot hold a job past ``--timeout-s``. (Looking
the relay's name up is the system resolver's, with its own time limits.)
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from relay.contract.exceptions import RelayError
from relay.contract.intake import PIPELINE_PATH, error_details
from relay.contract.local import DEFAULT_RELAY_URL, RELAY_TOKEN_VARIABLE, RELAY_URL_VARIABLE

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_MAX_ANSWER_BYTES = 64 * 1024
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class NotSent(RelayError):
    """The relay was not reached, or did not take the event; the message says why."""


def relay_url(flag: str | None, env: Mapping[str, str]) -> str:
    """Where to post: the flag, else ``$CI_RELAY_URL``, else the local relay's default.

    A base URL gets the intake's path; a URL that already has a path is used as is.
    ValueError for one that is not http(s), has a login (the token goes in
    ``$CI_RELAY_TOKEN``) or a port that is not a number; the message names where the URL
    came from and quotes none of it, since a login may hold a secret anywhere.
    """
    source = "--relay-url" if flag else RELAY_URL_VARIABLE
    url = flag or env.get(RELAY_URL_VARIABLE) or DEFAULT_RELAY_URL
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{source} has a host or port that cannot be read") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{source} is not an http(s) URL such as {DEFAULT_RELAY_URL}")
    if "@" in url:  # anywhere: a secret holding / or ? ends past the host
        raise ValueError(
            f"{source} takes no login: the relay's token goes in {RELAY_TOKEN_VARIABLE}"
        )
    if parts.path in ("", "/"):
        return url.rstrip("/") + PIPELINE_PATH
    return url


def relay_token(env: Mapping[str, str]) -> str | None:
    """The ingest token of ``$CI_RELAY_TOKEN`` (a file's final newline dropped), or None.

    ValueError if it holds a character a header cannot carry (printable ASCII only, as the
    relay's own token); the message names the variable, never the value.
    """
    token = env.get(RELAY_TOKEN_VARIABLE, "").strip() or None
    if token is not None and _PRINTABLE_ASCII.fullmatch(token) is None:
        raise ValueError(
            f"{RELAY_TOKEN_VARIABLE} holds a character that cannot be sent (printable ASCII only)"
        )
    return token


def post(url: str, body: bytes, timeout_s: float, token: str | None = None) -> None:
    """POST ``body`` to ``url``, with the ingest ``token`` if any, all within ``timeout_s``;
    return once the relay answered 2xx, else raise NotSent."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["DD-API-KEY"] = token  # where the relay, as Datadog, looks for a key
    parts = urlsplit(url)
    # No proxy: the relay runs next to the job, and a job's HTTP(S)_PROXY is for the internet.
    connection = _Connection(parts, time.monotonic() + timeout_s)
    try:
        connection.request("POST", _target(parts), body=body, headers=headers)
        answer = connection.getresponse()
        if 200 <= answer.status < 300:
            return  # taken; the body of a 2xx says nothing more
        # Any other status, a redirect included (not followed), means the event is not sent.
        raise NotSent(f"the relay at {url} answered {answer.status}{_details(answer)}")
    except TimeoutError:
        raise NotSent(f"the relay at {url} did not answer within {timeout_s:g} s") from None
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
        raise NotSent(f"cannot reach the relay at {url}: {exc}") from None
    except http.client.HTTPException as exc:
        raise NotSent(f"the relay at {url} gave no HTTP answer: {exc!r}") from None
    finally:
        connection.close()


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _left(deadline: float) -> float:
    """The seconds left until ``deadline`` (monotonic); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline has passed")
    return left


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket is bounded by one deadline for everything."""

    def __init__(self, parts: SplitResult, deadline: float) -> None:
        tls = parts.scheme == "https"
        super().__init__(parts.hostname or "", parts.port or (443 if tls else 80))
        self.default_port = 443 if tls else 80  # so that the Host header omits it
        self._tls = tls
        self._deadline = deadline

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), _left(self._deadline))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._tls:
            self.sock = _DeadlineSocket(self._deadline, raw)
            return
        context = ssl.create_default_context()
        context.sslsocket_class = _DeadlineTLSSocket
        raw.settimeout(_left(self._deadline))  # bounds the whole handshake
        tls = context.wrap_socket(raw, server_hostname=self.host)
        if not isinstance(tls, _DeadlineTLSSocket):  # sslsocket_class says it is
            raise TypeError(f"wrap_socket made a {type(tls).__name__}")
        tls.deadline = self._deadline
        self.sock = tls


class _DeadlineSocket(socket.socket):
    """A connected socket whose reads and writes get only the time left until ``deadline``."""

    def __init__(self, deadline: float, connected: socket.socket) -> None:
        super().__init__(connected.family, connected.type, connected.proto, connected.detach())
        self.deadline = deadline

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0, /) -> None:
        self.settimeout(_left(self.deadline))
        super().sendall(data, flags)


class _DeadlineTLSSocket(ssl.SSLSocket):
    """The TLS socket of the same (made by ``SSLContext.wrap_socket``, which sets nothing
    of ours: ``deadline`` is set once it returns)."""

    deadline = float("inf")

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self.settimeout(_left(self.deadline))
        super().sendall(data, flags)


def _details(answer: http.client.HTTPResponse) -> str:
    """The details of an answer in Datadog's error shape, as ``: a; b``; "" if it is not in
    that shape or cannot be read before the deadline."""
    try:
        body = answer.read(_MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException):
        return ""
    details = error_details(body)
    return ": " + "; ".join(details) if details else ""
