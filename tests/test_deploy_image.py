"""The image's inputs: deploy/constraints.txt pins every runtime dependency within pyproject's
ranges, and the Dockerfile runs as a numeric user."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
