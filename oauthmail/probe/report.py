"""What one step of ``oauthmail test`` found, and how it is printed (one line, plus the fix)."""

from __future__ import annotations

from dataclasses import dataclass

from oauthmail.text import cleanText

__all__ = ["FAILED", "NOTE", "OK", "SKIPPED", "StepResult", "formatResult"]

#: The step worked.
OK = "ok"
#: The step failed: the account does not work as configured (the command exits 1).
FAILED = "FAILED"
#: The step did not run (a step it needs failed, or it does not apply).
SKIPPED = "skipped"
#: The step ran and found something worth knowing that is not a failure.
NOTE = "note"

#: The width of the step column.
_STEP_WIDTH = 12


@dataclass(frozen=True)
class StepResult:
    """One step: its name, its status, one line of what was found, and what to fix."""

    step: str
    status: str
    line: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == FAILED


def formatResult(result: StepResult) -> list[str]:
    """The printed lines: ``STEP  STATUS  line``, and ``fix: ...`` under a failure."""
    head = f"{result.step:<{_STEP_WIDTH}} {result.status:<7} {cleanText(result.line, 400)}"
    lines = [head.rstrip()]
    if result.fix:
        lines.append(f"{'':<{_STEP_WIDTH}} fix:    {cleanText(result.fix, 600)}")
    return lines
