"""What the local checkout says about a commit, read with ``git`` (absent git is no error)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from relay.contract.urls import strip_credentials
from relay.runner.facts import GitFacts
from relay.runner.refs import is_sha

GIT_TIMEOUT_S = 5.0
# One field per line would break on multi-line messages: NUL-separated, message last.
_FORMAT = "%H%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"


@dataclass(frozen=True)
class Checkout:
    """A git working tree, read on demand."""

    path: Path

    def commit(self, rev: str = "HEAD") -> GitFacts | None:
        """The sha, author, committer, times and message of ``rev`` (HEAD or a full sha);
        None if not here, or if ``rev`` is neither."""
        if rev != "HEAD" and not is_sha(rev):
            return None
        out = self._git(
            "log", "-1", "--no-show-signature", f"--format={_FORMAT}", "--end-of-options", rev, "--"
        )
        if out is None:
            return None
        fields = out.split("\x00")
        if len(fields) != 8:
            return None
        sha, a_name, a_email, a_time, c_name, c_email, c_time, message = fields
        return GitFacts(
            sha=sha,
            author_name=a_name or None,
            author_email=a_email or None,
            author_time=a_time or None,
            committer_name=c_name or None,
            committer_email=c_email or None,
            commit_time=c_time or None,
            message=message.rstrip() or None,
        )

    def head(self) -> str | None:
        """The sha of HEAD."""
        out = self._git("rev-parse", "--verify", "-q", "--end-of-options", "HEAD")
        return out.strip() or None if out else None

    def repository_url(self) -> str | None:
        """Where ``origin`` points (``insteadOf`` applied), without credentials."""
        url = self._git("ls-remote", "--get-url", "--end-of-options", "origin")
        url = url.strip() if url else None
        # Without a remote, git echoes the name back.
        return strip_credentials(url) if url and url != "origin" else None

    def branch(self) -> str | None:
        """The checked-out branch, or None on a detached HEAD."""
        out = self._git("symbolic-ref", "-q", "--short", "--end-of-options", "HEAD")
        return out.strip() or None if out else None

    def tag(self) -> str | None:
        """A tag pointing at HEAD, if any."""
        out = self._git("tag", "--points-at=HEAD", "--end-of-options")
        tags = out.split() if out else []
        return tags[0] if tags else None

    def _git(self, *args: str) -> str | None:
        # Every positional argument follows --end-of-options (each command used here takes
        # it; checked with git 2.39), and a revision is HEAD or a checked sha: a value that
        # starts with "-" can never become an option such as --output=FILE.
        # safe.directory: a CI job's checkout is often owned by another user than the job
        # (containers); the runner only reads it.
        command = ["git", "-c", "safe.directory=*", "-C", str(self.path), *args]
        try:
            result = subprocess.run(  # noqa: S603 - git from PATH, no option from outside, no shell
                command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=GIT_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None
