"""The CI servers whose webhooks the relay takes: their headers, secrets, mappers, and the
shape of a 2xx answer (which ``GET /openapi.json`` describes).

GitLab sends its hook's secret token as it is (``X-Gitlab-Token``); GitHub signs each body
with its hook's secret (``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``). Both are checked
in constant time (relay.keyfiles.same_secret).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NotRequired

from multidict import CIMultiDictProxy

# typing's TypedDict is not enough for pydantic before Python 3.12 (GET /openapi.json).
from typing_extensions import TypedDict

from relay.keyfiles import same_secret
from relay.webhooks.github import map_github
from relay.webhooks.gitlab import JOB_HOOK, PIPELINE_HOOK, map_gitlab
from relay.webhooks.mapped import Mapped

# A delivery id longer than this is not one a provider made: the body's digest stands in.
_MAX_DELIVERY_ID = 200
_SIGNATURE_PREFIX = "sha256="
GITLAB_TOKEN_HEADER = "X-Gitlab-Token"  # noqa: S105 (a header name, not a secret)
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"

Headers = CIMultiDictProxy[str]


class WebhookAnswer(TypedDict):
    """A 2xx to a webhook: what became of the delivery (the CI server shows it beside it)."""

    status: str  # stored, dead_lettered, duplicate or ignored
    events: NotRequired[int]  # new events committed
    dead_letters: NotRequired[int]  # new dead letters (content that cannot become an event)
    reason: NotRequired[str]  # why an ignored delivery makes nothing


@dataclass(frozen=True)
class Source:
    """One CI server's webhooks: where they arrive and how they are read."""

    name: str  # the path's last part and the metrics' label: gitlab, github
    title: str  # for people: GitLab, GitHub
    setting: str  # webhooks.gitlab_token
    kind_header: str
    delivery_header: str
    check_header: str  # the header that carries the secret or the signature
    kinds: Mapping[str, str]  # a kind header's value -> its metrics label; others are "other"
    map: Callable[[str, Mapping[str, Any]], Mapped]
    # Why the request is not from the holder of ``secret`` (None when it is).
    check: Callable[[Headers, bytes, str], str | None]
    # Whether ``check`` needs the body (GitHub's signature) or only the headers.
    checks_body: bool

    @property
    def path(self) -> str:
        return f"/webhooks/{self.name}"

    @property
    def environment_variable(self) -> str:
        return "CI_RELAY_" + self.setting.upper().replace(".", "__")

    def kind_of(self, headers: Headers) -> tuple[str, str]:
        """The delivery's kind as sent, and its bounded label for counting."""
        kind = headers.get(self.kind_header, "").strip()
        return kind, self.kinds.get(kind, "other")

    def delivery_key(self, headers: Headers, body: bytes) -> str:
        """The key that names this delivery: its id, or its body's digest without one."""
        delivery = headers.get(self.delivery_header, "").strip()
        if delivery and len(delivery) <= _MAX_DELIVERY_ID:
            return f"{self.name}:delivery:{delivery}"
        return f"{self.name}:body:{hashlib.sha256(body).hexdigest()}"


def _gitlab_token(headers: Headers, _body: bytes, token: str) -> str | None:
    given = headers.get(GITLAB_TOKEN_HEADER)
    if given is None:
        return "X-Gitlab-Token is missing: set the hook's secret token to webhooks.gitlab_token"
    if not same_secret(given, token):
        return "X-Gitlab-Token does not match webhooks.gitlab_token"
    return None


def _github_signature(headers: Headers, body: bytes, secret: str) -> str | None:
    given = headers.get(GITHUB_SIGNATURE_HEADER)
    if given is None:
        return "X-Hub-Signature-256 is missing: set the webhook's secret to webhooks.github_secret"
    if not given.startswith(_SIGNATURE_PREFIX):
        return "X-Hub-Signature-256 must be sha256= and the hex HMAC-SHA256 of the body"
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not same_secret(given[len(_SIGNATURE_PREFIX) :].lower(), expected):
        return "X-Hub-Signature-256 does not match the body signed with webhooks.github_secret"
    return None


GITLAB = Source(
    name="gitlab",
    title="GitLab",
    setting="webhooks.gitlab_token",
    kind_header="X-Gitlab-Event",
    delivery_header="X-Gitlab-Event-UUID",
    check_header=GITLAB_TOKEN_HEADER,
    kinds={PIPELINE_HOOK: "pipeline", JOB_HOOK: "job"},
    map=map_gitlab,
    check=_gitlab_token,
    checks_body=False,
)
GITHUB = Source(
    name="github",
    title="GitHub",
    setting="webhooks.github_secret",
    kind_header="X-GitHub-Event",
    delivery_header="X-GitHub-Delivery",
    check_header=GITHUB_SIGNATURE_HEADER,
    kinds={"workflow_run": "workflow_run", "workflow_job": "workflow_job", "ping": "ping"},
    map=map_github,
    check=_github_signature,
    checks_body=True,
)
SOURCES = (GITLAB, GITHUB)
