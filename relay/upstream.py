"""The upstream intake: one keep-alive HTTP client, and the one place that maps answers to outcomes.

The flusher acts on outcomes (``Delivered``, ``Retry``, ``Split``, ``Reject``,
``Unauthorized``), never on raw status codes.
"""

from __future__ import annotations

import gzip
import ssl
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import structlog
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from relay import __version__, meters
from relay.config import ConfigError, UpstreamSettings
from relay.intake import PIPELINE_PATH, error_detail, request_body
from relay.keyfiles import KeyFile

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
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"invalid config: upstream.ca_file: {ca_file}: {reason}") from None
    return context


@dataclass(frozen=True)
class _Proxy:
    url: URL | None
    auth: aiohttp.BasicAuth | None


def env_proxy(url: URL) -> _Proxy:
    """The proxy the environment names for ``url``: HTTPS_PROXY or HTTP_PROXY by its scheme
    (credentials from the proxy URL or ~/.netrc), none if NO_PROXY lists its host; the
    lookup aiohttp's ``trust_env`` makes."""
    try:
        proxy, auth = get_env_proxy_for_url(url)
    except LookupError:
        return _Proxy(None, None)
    return _Proxy(proxy, auth)


class Upstream:
    """The HTTP client for the intake: one session per process, keep-alive."""

    def __init__(self, settings: UpstreamSettings, api_key: KeyFile | None = None) -> None:
        self._settings = settings
        # Read for every request, so that a key file re-read takes effect at the next one.
        self.api_key = api_key or KeyFile(
            "upstream.api_key_file", settings.api_key, settings.api_key_file
        )
        self._url = settings.base_url + PIPELINE_PATH
        self._ssl = tls_context(settings.ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: _Proxy = _Proxy(None, None)
        self.latency = meters.upstream_seconds()
        self.answers: Counter[tuple[str, str]] = Counter()  # by (outcome, status class)

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key.value)

    @property
    def display_url(self) -> str:
        """The URL batches go to, any password redacted: the one to put in a log line."""
        return self._settings.intake_url

    async def send(self, events: Sequence[bytes]) -> Outcome:
        """POST the events as one request; transport failures become ``Retry``."""
        return await self.send_body(request_body(events))

    async def send_body(self, body: bytes) -> Outcome:
        """POST a request body already in the intake's envelope (``request_body``)."""
        started = time.perf_counter()
        outcome, status = await self._post(body)
        self.latency.observe(time.perf_counter() - started)
        self.answers[outcome_label(outcome), status_class(status)] += 1
        return outcome

    async def _post(self, body: bytes) -> tuple[Outcome, int | None]:
        """The outcome, and the answer's status (None when no answer came)."""
        headers = self._headers()
        if self._settings.compress:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        client = self._client()  # opens the session and looks up its proxy, once
        try:
            async with client.post(
                self._url,
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl,
                proxy=self._proxy.url,
                proxy_auth=self._proxy.auth,
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
            # No trust_env: with it, aiohttp looks up the proxy and ~/.netrc in a thread for
            # every request. The upstream URL is fixed, so its proxy is looked up once.
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=True, raise_for_status=False
            )
            self._proxy = env_proxy(URL(self._url))
        return self._session

    def _headers(self) -> dict[str, str]:
        return {
            "DD-API-KEY": self.api_key.value or "",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"ci-relay/{__version__}",
        }
