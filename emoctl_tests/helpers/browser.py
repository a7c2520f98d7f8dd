"""Headless Chromium through Selenium, for tests of the static sites emoctl writes (the atlas, listening pages).

Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when missing) are driven with the
flags a closed network needs: no background networking, no component updates, no sync, a fresh profile. Pages
are opened from ``file://`` as a user opens them. Console messages are collected, so a test can assert that a
page logged no error.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_browser() -> None:
    """Fail (not skip) when the browser is missing: ``make test`` installs it, so its absence is a set-up defect."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
                    "(`make browser`, which `make test` runs) and run the tests again.")


@contextmanager
def chromium(download_dir: Path | None = None, width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A headless Chromium WebDriver; downloads go to ``download_dir`` without a prompt."""
    require_browser()
    profile = Path(tempfile.mkdtemp(prefix="emoctl-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False,
                                                  "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: object) -> list[str]:
    """The SEVERE console messages since the last call (the log is drained by reading it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "the condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1100) -> None:
    """A PNG of ``page`` as headless Chromium draws it (the docs' screenshots of the sites)."""
    with chromium(width=width, height=height) as driver:
        driver.get(Path(page).resolve().as_uri())
        time.sleep(1.0)  # scripts draw the table; images decode
        errors = console_errors(driver)
        if errors:
            raise RuntimeError(f"{page} logged console errors: {errors}")
        driver.save_screenshot(str(out))


if __name__ == "__main__":  # python -m emoctl_tests.helpers.browser PAGE.html OUT.png [HEIGHT]
    import sys

    screenshot(Path(sys.argv[1]), Path(sys.argv[2]), height=int(sys.argv[3]) if len(sys.argv) > 3 else 1100)
