"""The README gets a newcomer from a clone to a running relay and an accepted event on its
first screen, its test command is the one CI runs, and the links of the README and of the
reference pages it points to lead somewhere (a file, and a heading for an ``#anchor``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The reference pages the README's sections moved to.
MOVED = [
    ROOT / "docs" / name
    for name in ("configuration.md", "delivery.md", "parsing.md", "operations.md", "benchmarks.md")
]
FIRST_SCREEN = 50
MOST_LINES = 150

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+).+?\1")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _blocks(lines: list[str], language: str) -> list[list[str]]:
    """The fenced code blocks of ``language``, each as its lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    inside = False
    for line in lines:
        if _FENCE.match(line):
            if not inside:
                current = [] if line.strip().lstrip("`~").strip() == language else None
            elif current is not None:
                blocks.append(current)
            inside = not inside
        elif inside and current is not None:
            current.append(line)
    return blocks


def _prose(lines: list[str]) -> list[str]:
    """The lines outside fenced code blocks, with code spans blanked."""
    kept, fenced = [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(_CODE_SPAN.sub("", line))
    return kept


def _commands(block: list[str]) -> list[str]:
    """A shell block's commands, continuation lines joined, comments dropped."""
    joined = "\n".join(block).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and line[:1] != "#"]


def _ci_test_command() -> str:
    found = [
        line.strip()
        for line in _lines(ROOT / ".ci" / "run")
        if "pytest" in line and not line.lstrip().startswith("#")
    ]
    assert len(found) == 1, found
    return found[0]


def _run_commands(lines: list[str]) -> list[str]:
    return [
        command
        for block in _blocks(lines, "sh")
        for command in _commands(block)
        if "pip install" in command and "ci-relay serve" in command
    ]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: links and emphasis reduced to their text,
    lower-cased, punctuation dropped (letters, digits, ``-``, ``_`` and spaces kept), spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = "".join(c for c in text.lower() if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in ``path``, GitHub's ``-1``, ``-2`` suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in _lines(path):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or heading is None:
            continue
        base = anchor(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _relative_links(path: Path) -> list[str]:
    return [
        target
        for line in _prose(_lines(path))
        for target in _LINK.findall(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)
    ]


def _broken(path: Path, target: str) -> str | None:
    """Why ``target``, a link of ``path``, leads nowhere; None when it resolves."""
    file_part, _, fragment = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    if not linked.exists():
        return f"{target}: no such file"
    if fragment and linked.suffix == ".md" and fragment not in anchors(linked):
        return f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}"
    return None


def test_the_test_command_is_the_one_ci_runs() -> None:
    """The README's test command is, verbatim, the pytest line of .ci/run."""
    commands = [c for block in _blocks(_lines(README), "sh") for c in _commands(block)]
    assert [_ci_test_command()] == [c for c in commands if "pytest" in c]


def test_the_run_command_installs_and_serves() -> None:
    """One command installs the relay in the project's virtualenv and runs ci-relay serve."""
    commands = _run_commands(_lines(README))
    assert len(commands) == 1, commands
    steps = [shlex.split(step) for step in commands[0].split("&&")]
    assert steps[-1] == [".venv/bin/ci-relay", "serve"]
    assert ["python3", "-m", "venv", ".venv"] == steps[0]


def test_the_first_screen_runs_the_relay_and_posts_an_event() -> None:
    """Within the first lines: the run command, and a curl posting to the intake's path."""
    first = _lines(README)[:FIRST_SCREEN]
    assert _run_commands(first), "the run command is not on the first screen"
    curls = [c for block in _blocks(first, "sh") for c in _commands(block) if c.startswith("curl ")]
    assert [c for c in curls if "http://127.0.0.1:8780/api/v2/ci/pipeline" in c], curls
    assert "202" in "\n".join(first)


def test_the_readme_stays_short() -> None:
    lines = len(_lines(README))
    assert lines <= MOST_LINES, f"README.md has {lines} lines"


@pytest.mark.parametrize(
    "path", [README, *MOVED], ids=lambda p: str(p.relative_to(ROOT)) if isinstance(p, Path) else p
)
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link leads to a file, and an ``#anchor`` into markdown to a heading."""
    links = _relative_links(path)
    assert links
    broken = [why for target in links if (why := _broken(path, target)) is not None]
    assert [] == broken


def test_links_into_the_readme_resolve() -> None:
    """A page that links to one of the README's sections finds it there."""
    pages = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "README.md"]
    broken = [
        f"{page.relative_to(ROOT)}: {why}"
        for page in pages
        for target in _relative_links(page)
        if (page.parent / target.partition("#")[0]).resolve() == README
        and (why := _broken(page, target)) is not None
    ]
    assert [] == broken


def test_the_image_and_volume_have_one_name() -> None:
    """The README's container one-liner names the image and the volume docs/deploy.md uses."""
    commands = [c for block in _blocks(_lines(README), "sh") for c in _commands(block)]
    runs = [shlex.split(step) for c in commands for step in c.split("&&") if "docker" in step]
    built = [words[words.index("-t") + 1] for words in runs if words[:2] == ["docker", "build"]]
    volumes = [
        word.split(":")[0]
        for words in runs
        for word in words
        if word.endswith(":/var/lib/ci-relay")
    ]
    ran = [words[-1] for words in runs if words[:2] == ["docker", "run"]]
    assert (["ci-relay"], ["ci-relay-state"], ["ci-relay"]) == (built, volumes, ran)


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Is anything stuck? `ci-relay status`", "is-anything-stuck-ci-relay-status"),
        ("Try now: `ci-relay retry`", "try-now-ci-relay-retry"),
        ("CI servers' webhooks", "ci-servers-webhooks"),
        ("All of them in one command: `bench/run`", "all-of-them-in-one-command-benchrun"),
        ("Dead letters with reason `invalid`", "dead-letters-with-reason-invalid"),
        ("[Linked](x.md) heading_with_underscore", "linked-heading_with_underscore"),
    ],
)
def test_anchor_follows_githubs_rules(heading: str, expected: str) -> None:
    assert expected == anchor(heading)
