"""bench.compare's summary of two checkouts' rounds (no benchmark is run here)."""

from __future__ import annotations

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
