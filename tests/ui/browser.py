"""A real headless Chromium from the distribution's packages, driven by Selenium through the
system chromedriver (no browser or driver is downloaded), and what the tests read of it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.command import Command
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 15.0
# Headless, as root (no sandbox), and quiet: without the background-networking flags
# Chromium keeps trying to reach Google's hosts, which a machine without a network refuses.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--lang=en-US",
)


def installed() -> bool:
    """True when Chromium and its chromedriver are both on this machine."""
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A started headless Chromium with an empty profile in ``profile``, quit on exit; its
    console and network logs are kept for ``console_errors`` and ``requested_urls``."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome, timeout_s: float = WAIT_S) -> WebDriverWait[webdriver.Chrome]:
    """A wait that polls every 50 ms."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05)


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's errors since the last call (failed loads, exceptions, CSP violations)."""
    return [entry for entry in _log(driver, "browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the browser requested or navigated to since the last call."""
    urls: list[str] = []
    for entry in _log(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            urls.extend((params["request"]["url"], params.get("documentURL", "")))
    return urls


def _log(driver: webdriver.Chrome, kind: str) -> list[dict[str, Any]]:
    """The entries of one of the browser's logs since the last read (Selenium leaves
    ``get_log`` untyped)."""
    entries: list[dict[str, Any]] = driver.execute(Command.GET_LOG, {"type": kind})["value"]
    return entries


def rect(driver: webdriver.Chrome, element: WebElement) -> dict[str, float]:
    """The element's box in CSS pixels (left, right, width), fractions kept."""
    box: dict[str, float] = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return {left: r.left, right: r.right, width: r.width};",
        element,
    )
    return box


def style(driver: webdriver.Chrome, element: WebElement, prop: str) -> str:
    """A computed style property of the element."""
    value: str = driver.execute_script(
        "return getComputedStyle(arguments[0]).getPropertyValue(arguments[1]);", element, prop
    )
    return value
