"""Git refs split into a branch or a tag, and the commit shas given to git."""

from __future__ import annotations

import re

# A SHA-1 (40) or SHA-256 (64) object name, the only revisions given to git from outside.
_HEX_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def branch_or_tag(branch: str | None, tag: str | None) -> tuple[str | None, str | None]:
    """The branch, or the tag, named by a provider's ref and tag values; never both.

    Only whole leading prefixes are removed: ``refs/heads/``, ``refs/remotes/<remote>/``,
    ``origin/``; ``refs/tags/`` and ``tags/`` mark a tag. A tag given separately wins, since
    a provider that names a tag also gives it as the ref of a tag build.
    """
    if tag:
        return None, _without_tag_prefix(tag)
    if not branch:
        return None, None
    ref = _without_remote(branch)
    for prefix in ("refs/tags/", "tags/"):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return None, ref[len(prefix) :]
    ref = ref.removeprefix("refs/heads/")
    return (ref or None), None


def _without_remote(ref: str) -> str:
    if ref.startswith("refs/remotes/"):
        remote_and_name = ref[len("refs/remotes/") :]
        return remote_and_name.partition("/")[2] or remote_and_name
    if ref.startswith("origin/") and len(ref) > len("origin/"):
        return ref[len("origin/") :]
    return ref


def _without_tag_prefix(tag: str) -> str:
    ref = _without_remote(tag)
    for prefix in ("refs/tags/", "tags/"):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return ref[len(prefix) :]
    return ref


def is_sha(value: str | None) -> bool:
    """Whether ``value`` is a full commit id: 40 hex digits (SHA-1) or 64 (SHA-256)."""
    return value is not None and _HEX_SHA.fullmatch(value) is not None
