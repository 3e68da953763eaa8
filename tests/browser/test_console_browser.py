"""The console as a person uses it, in a real (headless) Chromium.

Each test serves the console and the test OAuth provider on pytest-twisted's reactor and
drives the browser from a thread (see ``conftest.py``), saving a screenshot of every page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthmail.config import parseConfig
from oauthmail.passwords import ScryptParameters, hashPassword
from oauthmail.service import OAuthMailService
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.web.console import ConsoleResource
from oauthmail.web.guard import ConsoleAccess
from oauthmail.web.site import ConsoleSite

from .pages import follow, read, until

pytestmark = pytest.mark.browser

CLIENT_ID = "browser-client"
CLIENT_SECRET = "browser-client-secret-456"
PASSWORD = "correct horse battery staple"


def _config(tmp_path: Path, provider: TestOAuthProvider, bind: str = "127.0.0.1"):
    return parseConfig(
        f"""
profiles:
  local:
    provider: generic
    authorization_endpoint: {provider.authorization_endpoint}
    token_endpoint: {provider.token_endpoint}
    device_endpoint: {provider.device_endpoint}
    client_id: {CLIENT_ID}
    client_secret: {CLIENT_SECRET}
    scopes: [mail]
accounts:
  - name: helpdesk
    address: helpdesk@example.com
    profile: local
  - name: alerts
    address: alerts@example.com
    profile: local
  - name: dev
    address: dev@example.com
    profile: local
    grant: device_code
store: {{path: {tmp_path}/var/db.sqlite, key_file: {tmp_path}/var/key}}
web: {{bind: "{bind}", port: 0}}
""",
        "browser.yaml",
        {},
    )


def _provider() -> TestOAuthProvider:
    provider = TestOAuthProvider(auto_approve=False, device_interval=1)
    provider.registerClient(CLIENT_ID, CLIENT_SECRET)
    provider.listen(reactor)
    return provider


def _stateOf(driver, account: str) -> str:
    from selenium.webdriver.common.by import By

    row = f"//tr[td[1][starts-with(., '{account}')]]"
    return read(driver, By.XPATH, row, lambda r: r.find_element(By.CSS_SELECTOR, "td.state").text)


@pytest_twisted.ensureDeferred
async def test_authorise_an_account_through_the_consent_page(tmp_path, browser_factory) -> None:
    """Authorise → consent page → Allow → callback → ok; a device account shows its code."""
    provider = _provider()
    service = OAuthMailService(_config(tmp_path, provider), reactor)
    service.startService()
    try:
        await service.whenReady()
        console = f"http://127.0.0.1:{service.console_port.getHost().port}"
        driver, shot = browser_factory()

        def person() -> dict:
            from selenium.webdriver.common.by import By

            seen: dict = {}
            driver.get(console + "/")
            assert driver.title == "oauthmail"
            assert _stateOf(driver, "helpdesk") == "unauthorised"
            # The stylesheet applied (CSP allows it): the state cell is coloured and bold.
            seen["weight"] = read(
                driver,
                By.CSS_SELECTOR,
                "td.state",
                lambda e: e.value_of_css_property("font-weight"),
            )
            shot("console-unauthorised")
            follow(driver, By.XPATH, "//form[@action='/authorize/helpdesk']/button")
            assert driver.current_url.startswith(provider.authorization_endpoint)
            assert "Consent" in driver.page_source
            shot("provider-consent")
            follow(driver, By.XPATH, "//button[@value='approve']")
            assert driver.current_url.startswith(console + "/callback?")
            seen["callback"] = read(driver, By.TAG_NAME, "body")
            shot("callback-authorised")
            follow(driver, By.LINK_TEXT, "Back to the console")
            seen["helpdesk"] = _stateOf(driver, "helpdesk")
            seen["alerts"] = _stateOf(driver, "alerts")
            shot("console-ok")
            follow(driver, By.XPATH, "//form[@action='/authorize/dev']/button")
            # The device page reloads itself every few seconds: read the code in one go.
            code, seen["code_size"] = read(
                driver,
                By.CSS_SELECTOR,
                "a + code",
                lambda e: (e.text, e.value_of_css_property("font-size")),
            )
            shot("device-code")
            threads.blockingCallFromThread(reactor, provider.approveDevice, code)
            until(driver, lambda d: "is authorised" in d.page_source)
            seen["device"] = read(driver, By.TAG_NAME, "body")
            shot("device-authorised")
            return seen

        seen = await threads.deferToThread(person)
        assert int(seen["weight"]) >= 700
        assert "helpdesk is authorised; its token expires in 59 min" in seen["callback"]
        assert (seen["helpdesk"], seen["alerts"]) == ("ok", "unauthorised")
        assert float(seen["code_size"].removesuffix("px")) > 16  # bigger than the text
        assert "dev is authorised; its token expires in 59 min" in seen["device"]
        assert (await service.store.getAccount("dev")).state == "ok"
        assert (await service.store.getAccount("helpdesk")).state == "ok"
        assert provider.requests["token"] >= 2
    finally:
        await service.stopService()
        await provider.stop()


def _offLoopbackConsole(tmp_path: Path, provider: TestOAuthProvider):
    """The console as configured for a wildcard bind, served on loopback for the test."""
    config = _config(tmp_path, provider)
    access = ConsoleAccess(
        bind="0.0.0.0",  # noqa: S104 - what the login is for; the test listens on loopback
        admin_password_hash=hashPassword(PASSWORD, ScryptParameters(n=2**10, r=8, p=1)),
    )
    store = MemoryTokenStore(clock=reactor)
    resource = ConsoleResource(config, store, reactor, access=access)
    return store, reactor.listenTCP(0, ConsoleSite(resource), interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_login_when_bound_off_loopback(tmp_path, browser_factory) -> None:
    """Off loopback the console asks for the admin password, lets the right one in, logs out."""
    provider = _provider()
    store, port = _offLoopbackConsole(tmp_path, provider)
    for name in ("helpdesk", "alerts"):
        await store.ensureAccount(name, "generic")
    console = f"http://127.0.0.1:{port.getHost().port}"
    driver, shot = browser_factory()

    def person() -> dict:
        import time

        from selenium.webdriver.common.by import By

        seen: dict = {}
        driver.get(console + "/")
        seen["first"] = driver.current_url
        shot("login")
        driver.find_element(By.ID, "password").send_keys("not the password")
        follow(driver, By.ID, "login")
        seen["wrong"] = read(driver, By.TAG_NAME, "body")
        shot("login-wrong-password")
        time.sleep(1.1)  # the first failure's wait is at most one second
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        follow(driver, By.ID, "login")
        seen["after"] = driver.current_url
        seen["cookies"] = driver.get_cookies()
        seen["buttons"] = len(driver.find_elements(By.XPATH, "//form[@action='/logout']"))
        seen["helpdesk"] = _stateOf(driver, "helpdesk")
        shot("console-logged-in")
        follow(driver, By.ID, "logout")
        seen["logged_out"] = driver.current_url
        shot("logged-out")
        driver.get(console + "/")
        seen["again"] = driver.current_url
        return seen

    try:
        seen = await threads.deferToThread(person)
    finally:
        await port.stopListening()
        await provider.stop()
    assert seen["first"] == console + "/login"
    assert "Wrong password" in seen["wrong"]
    assert seen["after"] == console + "/"
    (cookie,) = seen["cookies"]
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "oauthmail_session",
        True,
        "Strict",
    )
    assert seen["buttons"] == 1 and seen["helpdesk"] == "unauthorised"
    assert seen["logged_out"] == console + "/login"
    assert seen["again"] == console + "/login"


class _HostilePage(Resource):
    """A page on another site with a form aimed at the console's Authorise button."""

    isLeaf = True

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            "<!doctype html><title>Win a prize</title><h1>Win a prize</h1>"
            f"<form method='post' action='{self.target}/authorize/helpdesk'>"
            "<input type='hidden' name='csrf' value='guessed'>"
            "<button id='prize' type='submit'>Claim</button></form>"
        ).encode()


@pytest_twisted.ensureDeferred
async def test_another_site_cannot_reach_or_drive_the_console(tmp_path, browser_factory) -> None:
    """A rebound name gets 421; another site's form POST to the console changes nothing."""
    provider = _provider()
    service = OAuthMailService(_config(tmp_path, provider), reactor)
    service.startService()
    page = _HostilePage("")
    hostile = reactor.listenTCP(0, Site(page), interface="127.0.0.1")
    try:
        await service.whenReady()
        port = service.console_port.getHost().port
        console = f"http://127.0.0.1:{port}"
        page.target = console
        # evil.example resolves to 127.0.0.1, as after a DNS rebinding.
        driver, shot = browser_factory("--host-resolver-rules=MAP evil.example 127.0.0.1")

        def person() -> dict:
            from selenium.webdriver.common.by import By

            seen: dict = {}
            driver.get(f"http://evil.example:{port}/")
            seen["rebound"] = read(driver, By.TAG_NAME, "body")
            shot("rebound-name-refused")
            driver.get(f"http://evil.example:{port}/health")
            seen["health"] = read(driver, By.TAG_NAME, "body")
            driver.get(f"http://evil.example:{hostile.getHost().port}/")
            shot("hostile-page")
            follow(driver, By.ID, "prize")
            seen["posted"] = read(driver, By.TAG_NAME, "body")
            shot("hostile-post-refused")
            driver.get(f"http://localhost:{port}/")
            seen["localhost"] = _stateOf(driver, "helpdesk")
            shot("console-on-localhost")
            return seen

        seen = await threads.deferToThread(person)
        assert "Misdirected request" in seen["rebound"]
        assert "Misdirected request" in seen["health"] and "helpdesk" not in seen["health"]
        assert "Forbidden" in seen["posted"]
        assert "did not come from the console" in seen["posted"]
        assert seen["localhost"] == "unauthorised"
        assert provider.requests["authorize"] == 0
        assert service.authorizer._pending == {}
    finally:
        await hostile.stopListening()
        await service.stopService()
        await provider.stop()
