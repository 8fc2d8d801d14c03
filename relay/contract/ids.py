"""Ids derived from what identifies an object at its source, stable across processes."""

from __future__ import annotations

import uuid


def stable_id(namespace: uuid.UUID, *parts: object) -> str:
    """A UUID that is a function of ``namespace`` and ``parts``: the same identity at the
    source (a provider's run, a webhook's pipeline) always gives the same id."""
    return str(uuid.uuid5(namespace, "\x1f".join(str(part) for part in parts)))
