"""What every provider module shares: reading variables, and the provider record."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.runner.facts import CIFacts

Env = Mapping[str, str]


@dataclass(frozen=True)
class Provider:
    """A CI system: the variable whose presence identifies it, and how to read its facts."""

    name: str
    marker: str
    read: Callable[[Env], CIFacts]

    def detected(self, env: Env) -> bool:
        """Whether ``env`` is this provider's (its marker variable is set and not empty)."""
        return bool(env.get(self.marker))


def first(env: Env, *names: str) -> str | None:
    """The value of the first of ``names`` set to a non-empty string, else None."""
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def label_list(text: str | None) -> list[str]:
    """Labels given as a JSON array of strings, or as a comma-separated list."""
    if not text:
        return []
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            stripped = stripped.strip("[]")
        else:
            if isinstance(parsed, list):
                return [str(label) for label in parsed if str(label)]
    return [label.strip() for label in stripped.split(",") if label.strip()]


def expand_home(path: str | None, env: Env) -> str | None:
    """``path`` with a leading ``~`` or ``~/`` replaced by ``$HOME`` (``~user`` left alone)."""
    home = env.get("HOME")
    if path is None or not home or not (path == "~" or path.startswith("~/")):
        return path
    return home + path[1:]
