"""Every benchmark script runs end to end in ``--quick`` mode and ends with the result line.

Only the format of the last line is checked, never the figures: timings on a
shared test machine say nothing. A benchmark may add ``key=number`` fields
after ``rss_mb`` (``plain_ratio``, ``accounts``, ...). The benchmarks start their own Dovecot and
provider, so this needs Dovecot like the other integration tests; each script
runs as a subprocess exactly as a person would run it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requireDovecot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
#: Modules of bench/ that run other benchmarks rather than being one.
TOOLS = {"compare"}
SCRIPTS = sorted(
    p.stem
    for p in (ROOT / "bench").glob("*.py")
    if not p.name.startswith("_") and p.stem not in TOOLS
)
NUMBER = r"(?:inf|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
#: A benchmark may add figures of its own after rss_mb (bench.nodes: takeover_s, lost, ...).
RESULT = re.compile(
    rf"^bench [A-Za-z0-9_.-]+: ratio={NUMBER} ours={NUMBER} baseline={NUMBER}"
    rf" unit=\S+ rss_mb={NUMBER}(?: [a-z_]+={NUMBER})*$"
)


def _quickRun(script: str, *options: str) -> str:
    """Run ``python -m bench.SCRIPT --quick OPTIONS`` as a person would; its result line."""
    requireDovecot()
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--quick", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output"
    assert RESULT.match(lines[-1]), f"last line is not a result line: {lines[-1]!r}"
    return lines[-1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_ends_with_result_line(script: str) -> None:
    """``python -m bench.SCRIPT --quick`` exits 0 and its last line is the result line."""
    _quickRun(script)


def test_smtp_relay_with_several_clients_says_how_many() -> None:
    """``--clients 3``: three submitting connections; every message still reaches the final hop.

    The benchmark itself fails unless the final hop holds every message of the
    side it timed, so an exit status of 0 is the count check.
    """
    assert _quickRun("smtp_relay", "--clients", "3").endswith(" clients=3")
