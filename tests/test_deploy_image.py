"""The image's inputs: deploy/constraints.txt pins every runtime dependency within pyproject's
ranges, and the Dockerfile runs as a numeric user. The offline build, deploy/build-image.sh:
valid shell, the docker format (which keeps HEALTHCHECK), the one build deploy/test-image.sh
uses, and the image and volume names docs/deploy.md gives."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_pin_every_dependency_within_its_range() -> None:
    """Each runtime dependency of pyproject.toml (for Linux) has a pin its specifier allows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = _pins()
    linux: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    linux |= {"sys_platform": "linux", "platform_system": "Linux"}
    unmet = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(linux):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin, prereleases=True):
            unmet.append(f"{text} (pinned: {pin})")
    assert [] == unmet


def test_the_image_runs_as_a_numeric_user_and_group() -> None:
    """USER is numbers, which Kubernetes' runAsNonRoot can check without a passwd entry."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert ["10001:10001"] == users


BUILD_SCRIPT = ROOT / "deploy" / "build-image.sh"
TEST_SCRIPT = ROOT / "deploy" / "test-image.sh"
DOCS = ROOT / "docs" / "deploy.md"


def _commands(text: str) -> list[str]:
    """The script's commands, each with its continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.split(" #", 1)[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _assignment(text: str, name: str) -> str:
    """The value a script gives NAME, the default of NAME=${NAME:-default} included."""
    match = re.search(rf"^{name}=(?:\$\{{{name}:-)?([^}}\s]+)\}}?$", text, re.MULTILINE)
    assert match is not None, name
    return match.group(1)


def _repository(image: str) -> str:
    """ci-relay for localhost/ci-relay:latest, ci-relay:0.1.0 and ci-relay."""
    name = image.removeprefix("localhost/")
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def _sh_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


# Options of docker/podman run that take no value; every other option does (or has it after =).
_RUN_FLAGS = {"-d", "--detach", "--rm", "--read-only", "-i", "-t", "-it", "--init"}


def _run_image(command: list[str]) -> str:
    """The image of a `docker run` / `podman run` command: its first operand."""
    words = iter(command[2:])
    for word in words:
        if not word.startswith("-"):
            return word
        if word not in _RUN_FLAGS and "=" not in word:
            next(words)
    raise AssertionError(f"no image in {command}")


def test_build_image_script_is_valid_shell() -> None:
    """bash -n reads deploy/build-image.sh (and test-image.sh) without a syntax error."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    for script in (BUILD_SCRIPT, TEST_SCRIPT):
        result = subprocess.run(
            [bash, "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert 0 == result.returncode, result.stderr


def test_build_image_builds_in_the_docker_format() -> None:
    """Its one podman build uses --format docker (the OCI format drops HEALTHCHECK), on the base
    it made, with no cached layers left behind."""
    builds = [
        c
        for c in _commands(BUILD_SCRIPT.read_text(encoding="utf-8"))
        if c.startswith("podman build")
    ]
    assert 1 == len(builds)
    words = builds[0].split()
    assert "docker" == words[words.index("--format") + 1]
    assert "--layers=false" in words
    assert '"BASE_IMAGE=$BASE_IMAGE"' in words


def test_test_image_builds_only_through_build_image() -> None:
    """deploy/test-image.sh calls deploy/build-image.sh and builds nothing itself."""
    commands = _commands(TEST_SCRIPT.read_text(encoding="utf-8"))
    assert [
        c for c in commands if "deploy/build-image.sh" in c and not c.startswith(("log", "fail"))
    ]
    # As a command (at the start, after a pipe, && or $(, or as python -m), not as text.
    own_build = re.compile(
        r"(?:^|[|&;]\s*|\$\(|-m\s+)(?:podman build|podman import|debootstrap|pip wheel)\b"
    )
    assert [] == [c for c in commands if own_build.search(c)]


def test_test_image_runs_the_health_check() -> None:
    """The image's HEALTHCHECK is run on the test's container and must report healthy."""
    commands = _commands(TEST_SCRIPT.read_text(encoding="utf-8"))
    assert [c for c in commands if c.startswith('podman healthcheck run "$NAME"')]


def test_docs_name_the_image_and_the_volume_the_scripts_use() -> None:
    """Every image of the relay in docs/deploy.md is the repository build-image.sh makes, its
    podman run the default name itself, and every outbox volume the script's; the test script's
    own names are distinct, so that removing them by name touches nothing of a deployment."""
    build = BUILD_SCRIPT.read_text(encoding="utf-8")
    image = _assignment(build, "IMAGE")
    volume = _assignment(build, "STATE_VOLUME")
    assert ("localhost/ci-relay:latest", "ci-relay-state") == (image, volume)
    docs = DOCS.read_text(encoding="utf-8")

    images: list[str] = []
    volumes: set[str] = set()
    for block in _sh_blocks(docs, "sh"):
        for command in _commands(block):
            words = shlex.split(command, comments=True)
            if words[:2] in (["docker", "run"], ["podman", "run"]):
                images.append(_run_image(words))
            if words[:2] in (["docker", "build"], ["podman", "build"]):
                images.append(words[words.index("-t") + 1])
            if words and words[0] == "deploy/build-image.sh":
                images.extend(w for w in words[1:] if not w.startswith("-"))
            if words[1:3] == ["volume", "create"]:
                volumes.add(words[3])
            volumes.update(w.split(":")[0] for w in words if w.endswith(":/var/lib/ci-relay"))
    for block in _sh_blocks(docs, "yaml"):
        services = (yaml.safe_load(block) or {}).get("services", {})
        if "ci-relay" in services:
            images.append(services["ci-relay"]["image"])
            volumes.update(v.split(":")[0] for v in services["ci-relay"]["volumes"])
    assert images
    assert {"ci-relay"} == {_repository(i) for i in images}, images
    assert image.rsplit(":", 1)[0] in [i for i in images if i.startswith("localhost/")]
    assert {volume} == volumes

    test = TEST_SCRIPT.read_text(encoding="utf-8")
    assert "ci-relay" == _repository(_assignment(test, "IMAGE"))
    assert _assignment(test, "IMAGE") not in [*images, image]
    assert _assignment(test, "VOLUME") != volume
    assert _assignment(test, "NAME") != "ci-relay"
    assert _assignment(test, "BASE") == _assignment(build, "BASE_IMAGE")
