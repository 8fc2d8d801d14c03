"""What a CI job knows about itself: the run, the job, the commit and the machine."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from relay.contract.ids import stable_id

# uuid5 namespace of the ids derived from provider run identifiers; fixed for good, since
# changing it would split a running event from its finished one across an upgrade.
ID_NAMESPACE = uuid.UUID("5b0f6f3e-8d1c-4a4e-9a51-7c2f7e0c3a10")


def derived_id(*parts: str) -> str:
    """A UUID that is a function of ``parts``: the same run identifiers give the same id."""
    return stable_id(ID_NAMESPACE, *parts)


@dataclass
class GitFacts:
    """The commit under test; every field optional until resolved."""

    repository_url: str | None = None
    sha: str | None = None
    branch: str | None = None
    tag: str | None = None
    author_name: str | None = None
    author_email: str | None = None
    author_time: str | None = None
    committer_name: str | None = None
    committer_email: str | None = None
    commit_time: str | None = None
    message: str | None = None


@dataclass
class CIFacts:
    """What a provider's environment says about the current run.

    ``run_key`` is the provider's run identifiers joined into one string (documented per
    provider in docs/providers/); the pipeline's ``unique_id`` is derived from it, so every
    event of one run shares it and a re-run that changes the identifiers gets a new one.
    """

    provider: str
    run_key: str | None = None
    # Given with --unique-id: used as is instead of the id derived from run_key.
    explicit_unique_id: str | None = None
    previous_run_key: str | None = None
    previous_url: str | None = None
    pipeline_id: str | None = None
    pipeline_name: str | None = None
    pipeline_url: str | None = None
    pipeline_number: str | None = None
    pipeline_start: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    job_url: str | None = None
    job_start: str | None = None
    stage_name: str | None = None
    node_name: str | None = None
    node_workspace: str | None = None
    node_labels: list[str] = field(default_factory=list)
    git: GitFacts = field(default_factory=GitFacts)
    # What was ignored or repaired while the facts were read, one line each, for stderr.
    warnings: list[str] = field(default_factory=list)

    @property
    def unique_id(self) -> str | None:
        """The pipeline's unique_id: as given, else a UUID derived from ``run_key``."""
        if self.explicit_unique_id:
            return self.explicit_unique_id
        return derived_id(self.run_key) if self.run_key else None

    @property
    def previous_unique_id(self) -> str | None:
        """The unique_id of the attempt this run retries, where the provider counts attempts."""
        return derived_id(self.previous_run_key) if self.previous_run_key else None
