"""Headless Debian chromium through Selenium, for the tests that click through GitHub's pages.

Skips with the reason when chromium, chromedriver or selenium is missing; in CI (`CI` set) that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# What chromium needs as root on a machine with only loopback: no sandbox, no GPU, no calls home.
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def missing_browser_parts() -> list[str]:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    return missing


def headless_chromium(profile: Path, *, purpose: str) -> Iterator[Any]:
    """A Selenium driver for the duration of a fixture; `purpose` names the test in the CI failure."""
    missing = missing_browser_parts()
    if missing:
        reason = f"needs {', '.join(missing)}: apt-get install chromium chromium-driver (see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(f"{purpose} must run in CI, but it {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in (*CHROMIUM_ARGUMENTS, f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)
    try:
        yield driver
    finally:
        driver.quit()
