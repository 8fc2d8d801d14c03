"""Repository URLs lose their credentials; refs become a branch or a tag, never both."""

from __future__ import annotations

import pytest

from relay.contract.urls import strip_credentials
from relay.runner.refs import branch_or_tag, is_sha


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # GitLab's CI_REPOSITORY_URL carries the job token.
        (
            "https://gitlab-ci-token:glcbt-abc@gitlab.example.com/g/p.git",
            "https://gitlab.example.com/g/p.git",
        ),
        ("https://user:password@github.com:1234/o/r.git", "https://github.com:1234/o/r.git"),
        ("http://user%E2%82%AC@hostname.com/repo.git", "http://hostname.com/repo.git"),
        # an @ in the path survives; the user part ends at the authority's last @
        (
            "https://user:password@1.1.1.1:1234/DataDog/dogweb_with_@_yeah.git",
            "https://1.1.1.1:1234/DataDog/dogweb_with_@_yeah.git",
        ),
        ("https://u:p@w@host.example/r.git", "https://host.example/r.git"),
        (
            "ssh://user:password@host.xz:54321/path/to/repo.git/",
            "ssh://host.xz:54321/path/to/repo.git/",
        ),
        # query and fragment can carry tokens too
        ("https://host.example/r.git?private_token=abc#frag", "https://host.example/r.git"),
        ("https://host.example/", "https://host.example"),
        # scp-like and plain paths have no credentials to remove
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
        # a URL that does not parse as one still loses its user part
        ("https://u:p@[bad/r.git", "https://[bad/r.git"),
    ],
)
def test_strip_credentials(url: str, expected: str) -> None:
    """User, password, query and fragment are removed; host, port and path are kept."""
    assert expected == strip_credentials(url)


@pytest.mark.parametrize(
    ("branch", "tag", "expected"),
    [
        ("main", None, ("main", None)),
        ("refs/heads/feature/one", None, ("feature/one", None)),
        ("origin/master", None, ("master", None)),
        ("refs/remotes/upstream/fix", None, ("fix", None)),
        # prefixes are removed only whole, only at the start
        ("fix-origin/x", None, ("fix-origin/x", None)),
        ("bugfix/retags/foo", None, ("bugfix/retags/foo", None)),
        ("feature/tags/foo", None, ("feature/tags/foo", None)),
        ("feature/refs/heads/x", None, ("feature/refs/heads/x", None)),
        # tags
        ("refs/tags/v1.2.3", None, (None, "v1.2.3")),
        ("origin/tags/0.1.0", None, (None, "0.1.0")),
        ("tags/0.1.0", None, (None, "0.1.0")),
        # a tag given beside the ref wins (GitLab's tag pipelines give both)
        ("v1.0", "v1.0", (None, "v1.0")),
        ("refs/heads/main", "refs/tags/v2", (None, "v2")),
        # nothing, or a bare prefix, is no ref
        (None, None, (None, None)),
        ("", "", (None, None)),
        ("refs/heads/", None, (None, None)),
        ("refs/pull/42/merge", None, ("refs/pull/42/merge", None)),
    ],
)
def test_branch_or_tag(
    branch: str | None, tag: str | None, expected: tuple[str | None, str | None]
) -> None:
    """The ref names one branch or one tag, its well-known prefixes removed."""
    assert expected == branch_or_tag(branch, tag)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0123456789abcdef0123456789ABCDEF01234567", True),
        ("0123456789abcdef", False),
        ("HEAD", False),
        (None, False),
        ("0123456789abcdef0123456789abcdef012345678", False),
        # a SHA-256 repository's object name
        ("0123456789abcdef" * 4, True),
        ("0123456789abcdef" * 4 + "0", False),
        ("--output=/tmp/file", False),
        ("0123456789abcdef0123456789abcdef01234567\n", False),
    ],
)
def test_is_sha(value: str | None, expected: bool) -> None:
    """Only 40 (SHA-1) or 64 (SHA-256) hex digits are a commit id."""
    assert expected == is_sha(value)
