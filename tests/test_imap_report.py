"""A folder that fails the same way on every reconnect writes one log line, not one per session."""

from twisted.logger import globalLogPublisher

from oauthmail.imap.watcher.report import FolderReport


def _warnings(action) -> list[str]:
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace", "").endswith("watcher.report"):
            seen.append(event["error"])

    globalLogPublisher.addObserver(observer)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(observer)
    return seen


def test_the_same_failure_is_logged_once_until_a_session_proves_healthy() -> None:
    report = FolderReport("a/INBOX", "INBOX", "127.0.0.1:143")

    def fail() -> None:
        for _ in range(5):
            report.error("the connection was closed while syncing")
            report.lastError = None  # a SELECT succeeded in between
        report.error("another failure")
        report.error("the connection was closed while syncing")
        report.provedHealthy()
        report.error("the connection was closed while syncing")

    assert _warnings(fail) == [
        "the connection was closed while syncing",
        "another failure",
        "the connection was closed while syncing",
        "the connection was closed while syncing",
    ]
    assert report.lastError == "the connection was closed while syncing"


def test_a_login_is_logged_once_until_a_session_proves_healthy() -> None:
    """A folder that logs in and fails on every reconnect says "logged in" once."""
    report = FolderReport("a/INBOX", "INBOX", "127.0.0.1:143")
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace", "").endswith("watcher.report") and "text" in event:
            seen.append(event["text"])

    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(5):  # a server that lets us in, then fails, on every reconnect
            report.loggedIn("a@example.com")
        report.provedHealthy()
        report.loggedIn("a@example.com")  # after a healthy session, a login is news again
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen == ["logged in as a@example.com", "logged in as a@example.com"]
