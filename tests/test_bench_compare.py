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
    assert "per round -5.0 % (mean -3.3 %, 95 % interval -22.3 to +15.6 %), lower in 2 of 3" in line
    assert line.endswith("(sign test p = 1)")


def test_a_round_one_side_missed_is_left_out_of_the_pairs():
    line = describeRounds({0: 100.0, 1: 100.0}, {1: 110.0})
    assert "per round +10.0 % (mean +10.0 %), lower in 0 of 1 (sign test p = 1)" in line


def test_rounds_that_always_go_one_way_are_told_apart():
    old = {r: 100.0 for r in range(8)}
    new = {r: 95.0 + r % 2 for r in range(8)}  # -5 % and -4 % in turn
    line = describeRounds(old, new)
    assert "(mean -4.5 %, 95 % interval -4.9 to -4.1 %), lower in 8 of 8" in line
    assert line.endswith("(sign test p = 0.0078)")


def test_sign_test_is_two_sided_and_exact():
    assert compare.signTest(6, 2) == pytest.approx(2 * 37 / 256)
    assert compare.signTest(2, 6) == compare.signTest(6, 2)
    assert compare.signTest(0, 0) == 1.0
    assert compare.signTest(4, 4) == 1.0


def test_no_common_round_says_so():
    assert describeRounds({0: 1.0}, {}) == "ours: no round finished on both sides"


@pytest.mark.parametrize("option", [["--clients", "4"], ["--pace", "3"]])
def test_daemon_options_need_the_same_harness(capsys, option):
    # The old checkout's own smtp_relay may not know --clients or --pace.
    with pytest.raises(SystemExit) as exited:
        compare.main(["--old", "/tmp", *option, "smtp_relay"])
    assert exited.value.code == 2
    assert f"{option[0]} needs --same-harness" in capsys.readouterr().err


@pytest.mark.parametrize(
    "given",
    [["--clients", "4"], ["--pace", "2.5"], ["--clients", "4", "--pace", "3"]],
)
def test_daemon_options_go_to_the_daemon_benchmark_only(monkeypatch, capsys, given):
    calls = []

    def runOne(checkout, name, extra, harness=None):
        calls.append((name, list(extra)))
        return f"bench {name}: ratio=0.5 ours=100 baseline=200 unit=x rss_mb=1"

    monkeypatch.setattr(compare, "runOne", runOne)
    compare.main(
        ["--old", "/tmp", "--same-harness", *given, "--rounds", "1", "refresh", "smtp_relay"]
    )
    assert calls == [("refresh", []), ("refresh", []), ("smtp_relay", given), ("smtp_relay", given)]
    out = capsys.readouterr().out
    assert f"refresh: {given[0]} does not apply (no daemon child)" in out


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
    with pytest.raises(SystemExit):
        smtp_relay.parseArgs(["--pace", "-1"])
    assert "--pace: not below 0" in capsys.readouterr().err
    assert smtp_relay.parseArgs(["--pace", "2.5"]).pace == 2.5
