"""Driving pages without holding on to their elements (what keeps the browser tests steady).

An element found on one document is useless once the browser has moved on:
chromedriver then answers "stale element" or, mid-navigation, "Node with given
id does not belong to the document" (a plain ``WebDriverException``). So:
a click that navigates marks the old document and waits for a new one whose
``document.readyState`` is ``complete``; what a test reads is found and read
in one go, again if the page reloaded in between (the device page reloads
itself every few seconds). No sleeps: every wait is for the page's own state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Long enough for a loaded machine; a page that never comes fails the test.
WAIT = 30.0

_LEFT_AND_LOADED = "return !window.oauthmailOldPage && document.readyState === 'complete'"


def _wait(driver: Any) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(WebDriverException,))


def follow(driver: Any, by: str, what: str) -> None:
    """Click the element ``(by, what)`` and wait until the next page has loaded."""
    driver.execute_script("window.oauthmailOldPage = true")
    driver.find_element(by, what).click()
    _wait(driver).until(lambda d: d.execute_script(_LEFT_AND_LOADED))


def reload(driver: Any) -> None:
    """Load the page again and wait until it has."""
    driver.execute_script("window.oauthmailOldPage = true")
    driver.refresh()
    _wait(driver).until(lambda d: d.execute_script(_LEFT_AND_LOADED))


def read(driver: Any, by: str, what: str, how: Callable[[Any], T] = lambda e: e.text) -> T:
    """Find ``(by, what)`` and read it with ``how``, again if the page changed meanwhile."""
    found: list[T] = []

    def attempt(d: Any) -> bool:
        found[:] = [how(d.find_element(by, what))]
        return True

    _wait(driver).until(attempt)
    return found[0]


def until(driver: Any, predicate: Callable[[Any], Any]) -> Any:
    """Wait for ``predicate(driver)``, through reloads and navigations."""
    return _wait(driver).until(predicate)
