"""What one webhook delivery becomes: events with their deduplication keys, or why none."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from relay.contract.exceptions import RelayError
from relay.contract.ids import stable_id

# Every derived id is a UUID of this namespace and the object's identity at its source, so
# the same pipeline announced by two hooks (or redelivered) gets the same unique_id.
ID_NAMESPACE = uuid.UUID("6f1d8a54-3c1e-4b7a-9f7e-2f5d0c9b8e21")


@lru_cache(maxsize=4096)
def derived_id(*identity: object) -> str:
    """A stable UUID for an object known at its source by ``identity`` (e.g. instance, kind, id).

    Cached: one GitLab hook names its pipeline and its stages once per job.
    """
    return stable_id(ID_NAMESPACE, *identity)


@dataclass(frozen=True)
class Mapped:
    """The events one delivery makes (``data`` items, as a runner would post them), each with
    the key that names the object in that status: a key seen before means the event was made
    already (GitLab announces every status change; GitHub's manual redelivery has a new id).
    ``ignored`` says why a delivery makes nothing (a kind or status the relay does not use);
    ``unusable`` why a delivery the relay uses cannot make its event (a field it needs is
    missing): the edge keeps such a delivery as a dead letter for an operator to see."""

    events: tuple[dict[str, Any], ...] = ()
    keys: tuple[str, ...] = ()
    ignored: str | None = None
    unusable: str | None = None

    def __post_init__(self) -> None:
        if len(self.events) != len(self.keys):
            raise ValueError("one deduplication key per event")


class WrongKind(RelayError):
    """The payload is not what its kind header says (a job hook without its build): the
    sender's mistake, answered 400 with this reason."""


def ignored(reason: str) -> Mapped:
    """A delivery the relay answers 2xx and makes nothing of."""
    return Mapped(ignored=reason)


def unusable(reason: str) -> Mapped:
    """A delivery of a kind the relay uses that cannot become an event, and why."""
    return Mapped(unusable=reason)


def event(resource: dict[str, Any]) -> dict[str, Any]:
    """A ``data`` item of the intake's request holding ``resource``."""
    return {"attributes": {"resource": resource}, "type": "cipipeline_resource_request"}


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters (an intake limit), marked ``...`` where cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
