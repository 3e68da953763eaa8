"""Fixtures for the browser tests: Debian's Chromium driven by chromedriver through Selenium.

The browser is never downloaded: Selenium is pointed at ``/usr/bin/chromium`` and
``/usr/bin/chromedriver`` explicitly (``scripts/install-peers`` installs Debian's
``chromium`` and ``chromium-driver`` as root), so Selenium Manager has nothing to fetch.
Each test gets a fresh profile directory and a headless browser that stays off the
network (no background requests, no component updates, no QUIC).

Selenium's calls block until the browser answers, and the pages it loads are served by
the console on pytest-twisted's reactor: drive the browser from a thread
(``twisted.internet.threads.deferToThread``), never from the reactor thread.

Browser missing: the tests are skipped, except when ``CI=true``, where that is a broken
test machine and the tests fail instead (as with Dovecot).

Screenshots go to the test's temporary directory (their paths are printed); with
``OAUTHMAIL_SCREENSHOTS=DIR`` they are copied there too, for a reviewer to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

#: Headless, sandbox off (root in a container), and quiet on a closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Debian's Chromium through chromedriver and Selenium"
    )


def requireBrowser() -> None:
    """Skip (or, with ``CI=true``, fail) the calling test when Chromium or Selenium is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if not missing:
        return
    why = f"missing {', '.join(missing)}: run scripts/install-peers as root"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser is unavailable: {why}", pytrace=False)
    pytest.skip(f"no browser: {why}")


class Screenshots:
    """Saves numbered screenshots of what the browser shows, and prints where."""

    def __init__(self, driver, directory: Path, test: str) -> None:
        self.driver = driver
        self.directory = directory
        self.test = test
        self.count = 0
        self.paths: list[Path] = []
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.paths.append(path)
        print(f"screenshot: {path}")
        copy = os.environ.get("OAUTHMAIL_SCREENSHOTS")
        if copy:
            target = Path(copy) / self.test
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        return path


def startChromium(profile: Path, extra: tuple[str, ...] = ()):
    """A headless Chromium on a fresh profile, through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser_factory(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator:
    """Start browsers (with extra flags) for this test; all quit at its end.

    Returns ``start(*flags) -> (driver, screenshots)``.
    """
    requireBrowser()
    # Selenium Manager must never fetch anything: say so, on top of the explicit paths.
    monkeypatch.setenv("SE_OFFLINE", "true")
    started = []

    def start(*extra: str):
        profile = tmp_path / f"chromium-profile-{len(started)}"
        profile.mkdir()
        driver = startChromium(profile, extra)
        started.append(driver)
        shots = Screenshots(driver, tmp_path / "screenshots", request.node.name)
        return driver, shots

    yield start
    for driver in started:
        driver.quit()
