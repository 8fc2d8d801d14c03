"""The code base stays lint-clean, formatted and strictly typed (configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed next to {sys.executable}; install '.[test]'")
    return found


def test_ruff_lint() -> None:
    """ruff finds no lint problem."""
    result = _run(_tool("ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    """Every file is formatted as ruff format would."""
    result = _run(_tool("ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    """mypy --strict (pyproject's config) finds no type error in relay, tests and bench."""
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_installed() -> None:
    """pyproject's package list names every package under relay/, so a non-editable install
    (the README's `pip install .`, the image) ships all of them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"]) - {"relay.migrations"}
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "relay").rglob("__init__.py")
    }
    assert found == listed


def test_import_rules_between_packages_hold() -> None:
    """import-linter finds every contract of pyproject's [tool.importlinter] kept (the
    arrows docs/architecture.md draws between the packages)."""
    result = _run(_tool("lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def _top_level_modules() -> set[str]:
    """Every module and package directly under relay/, as ``relay.NAME``."""
    found = {f"relay.{p.stem}" for p in (ROOT / "relay").glob("*.py")}
    found |= {f"relay.{p.parent.name}" for p in (ROOT / "relay").glob("*/__init__.py")}
    return found - {"relay.__init__", "relay.__main__"}


@pytest.mark.parametrize(
    ("contract", "allowed"),
    [
        ("contract imports nothing of the relay outside itself", {"relay.contract"}),
        (
            "the runner imports only the contract, and stays light",
            {"relay.contract", "relay.runner"},
        ),
    ],
)
def test_closed_import_rules_name_every_module(contract: str, allowed: set[str]) -> None:
    """A rule of the form "imports nothing else" forbids every other module of relay/, so a
    module added later is covered the day it is added."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [rule] = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == contract]
    assert _top_level_modules() - allowed <= set(rule["forbidden_modules"])


def test_the_product_never_imports_test_support_names_every_product_module() -> None:
    """The test-support rule covers every module of the product, i.e. all but relay.testing."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [rule] = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["name"] == "the product never imports test support"
    ]
    assert _top_level_modules() - {"relay.testing"} == set(rule["source_modules"])
