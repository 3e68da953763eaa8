"""A machine without the browser skips the browser tests, except under CI=true where it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.outcomes import Failed, Skipped

from . import conftest


def test_missing_browser_is_a_skip_locally_and_a_failure_under_ci(monkeypatch, tmp_path) -> None:
    """Without /usr/bin/chromium: skip, naming the fix; with CI=true: fail instead."""
    monkeypatch.setattr(conftest, "CHROMIUM", Path(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(Skipped, match="scripts/install-peers"):
        conftest.requireBrowser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="CI=true but the browser is unavailable"):
        conftest.requireBrowser()
