"""The run's facts with every source merged: flags, ``DD_GIT_*``, the provider, the checkout.

Precedence, highest first:

- repository URL, sha, branch/tag: flags, then ``DD_GIT_*``, then the provider's variables,
  then the checkout. A sha that is not 40 or 64 hex digits is skipped (with a warning when
  the flag or ``DD_GIT_COMMIT_SHA`` gave it). A branch or tag given by a flag or
  ``DD_GIT_*`` replaces the provider's ref as a whole, so the result never holds both.
- author, committer, times, message: ``DD_GIT_COMMIT_*``, then the checkout's commit of that
  sha (``git log``), then the provider's variables. The checkout is read for the resolved
  sha only, so a checkout of another commit never lends its author.
- pipeline and stage names, URLs, ids: flags, then the provider. Where the provider gives
  no run identifiers, ``--pipeline-id`` is the run's key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from relay.contract.urls import strip_credentials
from relay.runner import providers
from relay.runner.facts import CIFacts, GitFacts
from relay.runner.gitinfo import Checkout
from relay.runner.providers.common import Env, first
from relay.runner.refs import branch_or_tag, is_sha

# DD_GIT_* variable -> GitFacts field, as Datadog's own tools read them.
DD_GIT = {
    "DD_GIT_REPOSITORY_URL": "repository_url",
    "DD_GIT_COMMIT_SHA": "sha",
    "DD_GIT_BRANCH": "branch",
    "DD_GIT_TAG": "tag",
    "DD_GIT_COMMIT_MESSAGE": "message",
    "DD_GIT_COMMIT_AUTHOR_NAME": "author_name",
    "DD_GIT_COMMIT_AUTHOR_EMAIL": "author_email",
    "DD_GIT_COMMIT_AUTHOR_DATE": "author_time",
    "DD_GIT_COMMIT_COMMITTER_NAME": "committer_name",
    "DD_GIT_COMMIT_COMMITTER_EMAIL": "committer_email",
    "DD_GIT_COMMIT_COMMITTER_DATE": "commit_time",
}
_REF_FIELDS = ("repository_url", "sha", "branch", "tag")
_COMMIT_FIELDS = tuple(f.name for f in fields(GitFacts) if f.name not in _REF_FIELDS)


@dataclass
class Overrides:
    """Run facts given on the command line; None leaves the other sources to decide."""

    provider: str | None = None
    unique_id: str | None = None
    pipeline_id: str | None = None
    pipeline_name: str | None = None
    pipeline_url: str | None = None
    stage_name: str | None = None
    git_repository_url: str | None = None
    git_sha: str | None = None
    git_branch: str | None = None
    git_tag: str | None = None


def resolve(env: Env, overrides: Overrides, checkout_dir: Path) -> CIFacts:
    """The run's facts from every source, each field from the highest one that has it."""
    facts = providers.detect(env, overrides.provider)
    for name in ("pipeline_id", "pipeline_name", "pipeline_url", "stage_name"):
        value = getattr(overrides, name)
        if value:
            setattr(facts, name, value)
    if overrides.unique_id:
        facts.explicit_unique_id = overrides.unique_id
    if facts.run_key is None and facts.pipeline_id:
        # The generic rule: a run is its pipeline id (give one per run and attempt).
        facts.run_key = f"{facts.provider}:{facts.pipeline_id}"
    facts.git = _git(env, overrides, facts.git, Checkout(checkout_dir), facts.warnings)
    return facts


def _git(
    env: Env, overrides: Overrides, provided: GitFacts, checkout: Checkout, warnings: list[str]
) -> GitFacts:
    user = GitFacts(**{field: first(env, var) for var, field in DD_GIT.items()})
    flags = GitFacts(
        repository_url=overrides.git_repository_url,
        sha=overrides.git_sha,
        branch=overrides.git_branch,
        tag=overrides.git_tag,
    )
    sha = (
        _checked_sha(flags.sha, "--git-sha", warnings)
        or _checked_sha(user.sha, "DD_GIT_COMMIT_SHA", warnings)
        or (provided.sha if is_sha(provided.sha) else None)
    )
    commit = checkout.commit(sha or "HEAD")
    git = replace(provided, sha=sha or (commit.sha if commit else None))
    if commit is not None:
        for name in _COMMIT_FIELDS:
            setattr(git, name, getattr(commit, name) or getattr(git, name))
    for name in _COMMIT_FIELDS:
        setattr(git, name, getattr(user, name) or getattr(git, name))
    repository = flags.repository_url or user.repository_url or git.repository_url
    git.repository_url = strip_credentials(repository) if repository else checkout.repository_url()
    if flags.branch or flags.tag:
        git.branch, git.tag = flags.branch, flags.tag
    elif user.branch or user.tag:
        git.branch, git.tag = user.branch, user.tag
    elif not (git.branch or git.tag) and commit is not None and commit.sha == checkout.head():
        # Only the checkout's own HEAD can lend its branch or tag.
        git.branch = checkout.branch()
        git.tag = None if git.branch else checkout.tag()
    git.branch, git.tag = branch_or_tag(git.branch, git.tag)
    return git


def _checked_sha(value: str | None, source: str, warnings: list[str]) -> str | None:
    """``value`` if it is a full sha; else None, with a warning naming ``source`` (a value
    such as ``--output=FILE`` must never reach git, and the intake wants a full sha)."""
    if not value or is_sha(value):
        return value or None
    warnings.append(f"{source} is not a commit sha (40 or 64 hex digits); ignored")
    return None
