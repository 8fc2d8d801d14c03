"""The upstream intake: one keep-alive HTTP client, and the one place that maps answers to outcomes.

The flusher acts on outcomes (``Delivered``, ``Retry``, ``Split``, ``Reject``,
``Unauthorized``), never on raw status codes.
"""

from __future__ import annotations

import gzip
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.request import proxy_bypass

import aiohttp
import structlog
from aiohttp.helpers import basicauth_from_netrc, netrc_from_env, strip_auth_from_url
from yarl import URL

from relay import __version__, meters
from relay.config import (
    ConfigError,
    UpstreamSettings,
    check_http_url,
    proxy_variable,
    redact_url,
)
from relay.contract.intake import PIPELINE_PATH, error_detail
from relay.keyfiles import KeyFile, check_pem_file

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Delivered:
    """2xx: the upstream has the events."""


@dataclass(frozen=True)
class Retry:
    """Send the same events again later; ``after_s`` is the upstream's minimum wait, if any.

    ``batch_suspect``: the failure (a 5xx, a 408, a timeout) may come from the events
    themselves, so a batch that keeps failing is worth isolating. A 429 or a refused
    connection says nothing about the events.
    """

    reason: str
    after_s: float | None = None
    status: int | None = None
    detail: str = ""
    batch_suspect: bool = False


@dataclass(frozen=True)
class _Refusal:
    """An answer that refuses the batch, with its status and the upstream's detail."""

    status: int
    detail: str


@dataclass(frozen=True)
class Split(_Refusal):
    """413: the batch is too large; halves may pass."""


@dataclass(frozen=True)
class Reject(_Refusal):
    """400: the upstream refuses something in the batch."""


@dataclass(frozen=True)
class Unauthorized(_Refusal):
    """401/403: the API key is missing, wrong or lacks permission; nothing will pass."""


@dataclass(frozen=True)
class Misconfigured:
    """3xx, 404, 405, 415: the URL (or a proxy on the way) is wrong; nothing will pass.

    A redirect is never followed: a 2xx from another URL must not acknowledge events, and
    the API key goes to the configured origin only.
    """

    status: int
    detail: str
    location: str | None = None


Outcome = Delivered | Retry | Split | Reject | Unauthorized | Misconfigured
_OUTCOME_LABELS: dict[type, str] = {
    Delivered: "delivered",
    Retry: "retry",
    Split: "too_large",
    Reject: "rejected",
    Unauthorized: "unauthorized",
    Misconfigured: "misconfigured",
}

# An upstream answer is read up to this many bytes, decompressed: enough for any error
# detail, and a huge or zip-bomb answer costs no memory.
MAX_ANSWER_BYTES = 64 * 1024


def outcome_of(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """What an upstream answer means for the batch that was sent."""
    if 200 <= status < 300:
        return Delivered()
    if 300 <= status < 400:
        location = headers.get("Location")
        return Misconfigured(status, f"redirect to {location or '(no Location)'}", location)
    detail = error_detail(status, body)
    if status in (404, 405, 415):
        return Misconfigured(status, detail)
    if status in (400, 422):
        return Reject(status, detail)
    if status == 413:
        return Split(status, detail)
    if status in (401, 403):
        return Unauthorized(status, detail)
    if status == 429:
        return Retry(f"429 rate limited: {detail}", _rate_limit_wait(headers), status, detail)
    # 408, 5xx, and anything unexpected: keep the events and try again.
    after_s = _retry_after(headers.get("Retry-After"))
    suspect = status == 408 or status >= 500
    return Retry(f"{status}: {detail}", after_s, status, detail, batch_suspect=suspect)


def outcome_label(outcome: Outcome) -> str:
    """The outcome's name for the ``outcome`` label of ci_relay_upstream_requests_total."""
    return _OUTCOME_LABELS[type(outcome)]


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx``, or ``none`` when no answer came (timeout, connection error)."""
    return "none" if status is None else f"{status // 100}xx"


def _rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    wait = _retry_after(headers.get("Retry-After"))
    if wait is None:
        wait = _seconds(headers.get("X-RateLimit-Reset"))
    return wait


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    # Any wait is taken at its word here; the flusher caps it at retry.max_wait_s.
    return seconds if 0 <= seconds < float("inf") else None


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of the (decompressed) answer; the rest is never read.

    An answer not read to its end closes its connection instead of returning it to the pool.
    """
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus those of ``ca_file`` (an intercepting proxy's CA).

    ConfigError when the file cannot be used.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        check_pem_file("upstream.ca_file", ca_file)
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"invalid config: upstream.ca_file: {ca_file}: {reason}") from None
    return context


@dataclass(frozen=True)
class Proxy:
    """The proxy requests to the upstream go through (``url`` None: directly), its
    credentials, the variable that named it and its value with any login redacted."""

    url: URL | None = None
    auth: aiohttp.BasicAuth | None = None
    variable: str | None = None
    redacted: str = ""

    @property
    def shown(self) -> str:
        """Where requests go, for a person: through which proxy (no login), or directly."""
        if self.url is None:
            return "directly (no proxy variable applies)"
        return f"through the proxy {self.redacted} ({self.variable})"


_PROXY_EXAMPLE = "http://proxy.example:3128"


def env_proxy(url: URL) -> Proxy:
    """The proxy the environment names for ``url``, as aiohttp's ``trust_env`` chooses it:
    none if NO_PROXY lists its host, else HTTPS_PROXY or HTTP_PROXY by its scheme, with
    credentials from the proxy URL or ~/.netrc.

    Only the variable that applies is read, and it is checked whole (an http:// proxy, its
    host, port and login): ConfigError naming the variable otherwise, which never quotes
    the proxy's login or secret. A bad HTTP_PROXY does not concern an https upstream.
    """
    if url.host is None or proxy_bypass(url.host):
        return Proxy()
    found = proxy_variable(url.scheme)
    if found is None:
        return Proxy()
    variable, value = found
    try:
        proxy, auth = strip_auth_from_url(_proxy_url(value.strip()))
        auth = auth or _netrc_auth(proxy.host)
    except ValueError as exc:
        raise ConfigError(
            f"invalid environment: {variable}: {exc} (the proxy for {url.scheme}:// upstreams; "
            "hosts in NO_PROXY are reached directly)"
        ) from None
    return Proxy(proxy, auth, variable, redact_url(value.strip()))


def _proxy_url(value: str) -> URL:
    """A proxy URL: http://, a host, an optional port and login, nothing after the host.

    aiohttp ignores an https:// proxy and cannot use a socks one: only http:// is taken, so
    that no setting quietly sends the requests around the proxy (the tunnel to an https
    upstream is TLS all the same).
    """
    parts = check_http_url(value, ("http",), _PROXY_EXAMPLE)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("takes no path, query or fragment")
    return URL(value)


def _netrc_auth(host: str | None) -> aiohttp.BasicAuth | None:
    """The ~/.netrc (or $NETRC) credentials for the proxy's host, as aiohttp looks them up;
    ValueError when basic authentication cannot carry them."""
    try:
        auth = basicauth_from_netrc(netrc_from_env(), host or "")
    except LookupError:
        return None
    try:
        auth.encode()
    except UnicodeEncodeError:
        raise ValueError(
            "its ~/.netrc entry holds a character beyond Latin-1, which basic "
            "authentication cannot carry"
        ) from None
    return auth


def upstream_proxy(settings: UpstreamSettings) -> Proxy:
    """The proxy requests to the configured upstream go through; ConfigError if unusable."""
    return env_proxy(URL(settings.base_url + PIPELINE_PATH))


class Upstream:
    """The HTTP client for the intake: one session per process, keep-alive."""

    def __init__(self, settings: UpstreamSettings, api_key: KeyFile | None = None) -> None:
        self._settings = settings
        # Read for every request, so that a key file re-read takes effect at the next one.
        self.api_key = api_key or KeyFile.api_key(settings)
        self._url = settings.base_url + PIPELINE_PATH
        self._ssl = tls_context(settings.ca_file)
        # Looked up once, here at start, so that a proxy variable that cannot be used stops
        # the relay before it accepts events (aiohttp's trust_env would look it up, with
        # ~/.netrc, in a thread for every request, and fail only then).
        self.proxy = upstream_proxy(settings)
        self._session: aiohttp.ClientSession | None = None
        self.latency = meters.upstream_seconds()
        self.answers: Counter[tuple[str, str]] = Counter()  # by (outcome, status class)

    @property
    def dry_run(self) -> bool:
        """True when nothing is sent (``upstream.enabled = false``)."""
        return not self._settings.enabled

    @property
    def has_api_key(self) -> bool:
        """Whether a request can be sent: a dry run sends none, so it needs no key."""
        return self.dry_run or bool(self.api_key.value)

    @property
    def display_url(self) -> str:
        """The URL batches go to, any password redacted: the one to put in a log line."""
        return "nowhere (dry run)" if self.dry_run else self._settings.intake_url

    async def send_body(self, body: bytes) -> Outcome:
        """POST a request body already in the intake's envelope (``request_body``);
        transport failures become ``Retry``."""
        started = time.perf_counter()
        outcome, status = await self._post(body)
        self.latency.observe(time.perf_counter() - started)
        self.answers[outcome_label(outcome), status_class(status)] += 1
        return outcome

    async def _post(self, body: bytes) -> tuple[Outcome, int | None]:
        """The outcome, and the answer's status (None when no answer came)."""
        if self.dry_run:
            return Delivered(), None  # settled as not sent (relay.store: the history's fate)
        headers = self._headers()
        if self._settings.compress:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        client = self._client()
        try:
            async with client.post(
                self._url,
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl,
                proxy=self.proxy.url,
                proxy_auth=self.proxy.auth,
            ) as response:
                answer = await _read_at_most(response, MAX_ANSWER_BYTES)
                return outcome_of(response.status, response.headers, answer), response.status
        except TimeoutError:
            return Retry("timeout", batch_suspect=True), None
        except aiohttp.ClientError as exc:
            return Retry(f"connection error: {type(exc).__name__}: {exc}"), None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self._settings.request_timeout_s,
                sock_connect=self._settings.connect_timeout_s,
            )
            # No trust_env: the proxy was looked up once, at start (``upstream_proxy``).
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=True, raise_for_status=False
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        return {
            "DD-API-KEY": self.api_key.value or "",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"ci-relay/{__version__}",
        }
