"""Helpers for the runner-side tests: a clean environment, a real git checkout, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

AUTHOR = ("Ada Lovelace", "ada@example.com", "2025-01-02T03:04:05+01:00")
COMMITTER = ("Charles Babbage", "charles@example.com", "2025-01-03T04:05:06+00:00")
MESSAGE = "Add the difference engine\n\nWith a second paragraph."


def clean_env(home: Path, **variables: str) -> dict[str, str]:
    """An environment holding no CI provider's variables: only PATH, a HOME and ``variables``.

    Built from nothing rather than filtered, so the CI system running the tests cannot leak in.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "CI_RELAY_MARKER_DIR": str(home / "marks"),
    }
    env.update(variables)
    return env


def make_repo(path: Path, branch: str = "main") -> str:
    """A git repository at ``path`` with one commit by AUTHOR and COMMITTER; its sha."""
    path.mkdir(parents=True, exist_ok=True)
    env = clean_env(path.parent) | {
        "GIT_AUTHOR_NAME": AUTHOR[0],
        "GIT_AUTHOR_EMAIL": AUTHOR[1],
        "GIT_AUTHOR_DATE": AUTHOR[2],
        "GIT_COMMITTER_NAME": COMMITTER[0],
        "GIT_COMMITTER_EMAIL": COMMITTER[1],
        "GIT_COMMITTER_DATE": COMMITTER[2],
    }

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(path), *args],  # noqa: S607 - git from PATH
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    git("init", "-q", "-b", branch)
    git("remote", "add", "origin", "https://token:secret@git.example.com/acme/engine.git")
    (path / "README").write_text("engine\n", encoding="utf-8")
    git("add", "README")
    git("commit", "-q", "-m", MESSAGE)
    return git("rev-parse", "HEAD")


def unused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
