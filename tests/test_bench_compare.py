"""bench.compare's summary and options, and smtp_relay's (no benchmark is run here)."""

from __future__ import annotations

import pytest

from bench import compare, smtp_relay
from bench.compare import describeRounds


def test_rounds_are_compared_pairwise_and_counted():
    old = {0: 100.0, 1: 200.0, 2: 100.0}
    new = {0: 90.0, 1: 210.0, 2: 95.0}
    line = describeRounds(old, new)
    assert "ours old 100 new 95 (medians)" in line
    assert "per round -5.0 % (mean -3.3 %), lower in 2 of 3" in line


def test_a_round_one_side_missed_is_left_out_of_the_pairs():
    line = describeRounds({0: 100.0, 1: 100.0}, {1: 110.0})
    assert "per round +10.0 % (mean +10.0 %), lower in 0 of 1" in line


def test_no_common_round_says_so():
    assert describeRounds({0: 1.0}, {}) == "ours: no round finished on both sides"


def test_clients_needs_the_same_harness(capsys):
    # The old checkout's own smtp_relay may not know --clients.
    with pytest.raises(SystemExit) as exited:
        compare.main(["--old", "/tmp", "--clients", "4", "smtp_relay"])
    assert exited.value.code == 2
    assert "--clients needs --same-harness" in capsys.readouterr().err


def test_clients_goes_to_the_daemon_benchmark_only(monkeypatch, capsys):
    calls = []

    def runOne(checkout, name, extra, harness=None):
        calls.append((name, list(extra)))
        return f"bench {name}: ratio=0.5 ours=100 baseline=200 unit=x rss_mb=1"

    monkeypatch.setattr(compare, "runOne", runOne)
    compare.main(
        ["--old", "/tmp", "--same-harness", "--clients", "4", "--rounds", "1"]
        + ["refresh", "smtp_relay"]
    )
    assert calls == [
        ("refresh", []),
        ("refresh", []),
        ("smtp_relay", ["--clients", "4"]),
        ("smtp_relay", ["--clients", "4"]),
    ]
    assert "refresh: --clients does not apply (no daemon child)" in capsys.readouterr().out


def test_smtp_relay_clients_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        smtp_relay.parseArgs(["--clients", "0"])
    assert "--clients: at least 1" in capsys.readouterr().err
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    with pytest.raises(SystemExit):
        smtp_relay.parseArgs(["--clients", "11", "--daemon-from", str(tmp_path)])
    assert "--clients: at most 10 with --daemon-from" in capsys.readouterr().err
    assert smtp_relay.parseArgs(["--clients", "11"]).clients == 11
