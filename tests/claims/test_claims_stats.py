"""rnnlab.claims.stats on made-up numbers whose answer is known."""

import math

import pytest

from rnnlab.claims.stats import claim_verdict, compare, interval, t975, verdict


def test_t_quantiles_match_tables():
    assert t975(1) == pytest.approx(12.706, abs=1e-3)
    assert t975(2) == pytest.approx(4.303, abs=1e-3)
    assert t975(9) == pytest.approx(2.262, abs=1e-3)
    assert t975(40) == pytest.approx(2.021, abs=1e-3)   # beyond the table: the expansion
    assert t975(120) == pytest.approx(1.980, abs=1e-3)


def test_interval_by_hand():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    half = 4.3027 / math.sqrt(3)
    assert iv["mean"] == pytest.approx(2.0)
    assert (iv["lo"], iv["hi"]) == pytest.approx((2 - half, 2 + half), abs=1e-4)
    assert interval([5.0])["lo"] is None                 # one seed: no interval
    assert interval([1.0, None, 3.0])["missing"] == 1


def test_paired_difference_removes_what_seeds_share():
    # the levels overlap widely, the per-seed differences are all about -1: supported
    a, b = [10.0, 20.0, 30.0], [11.0, 21.1, 30.9]
    got = compare(a, b, "<")
    assert got["mean"] == pytest.approx(-1.0)
    assert got["hi"] < 0 and got["verdict"] == "supported"
    assert compare(a, b, ">")["verdict"] == "contradicted"
    assert interval(a)["hi"] > interval(b)["lo"]          # unpaired, they would not separate


def test_log_scale_is_a_ratio():
    got = compare([2.0, 4.0], [1.0, 2.0], ">", scale="log")
    assert got["mean"] == pytest.approx(math.log(2)) and got["lo"] == pytest.approx(math.log(2))
    assert got["verdict"] == "supported"


@pytest.mark.parametrize("lo, hi, expect, margin, want", [
    (-2, -1, "<", 0, "supported"), (1, 2, "<", 0, "contradicted"), (-1, 1, "<", 0, "inconclusive"),
    (1, 2, ">", 0, "supported"), (-0.1, 0.1, "~", 0.5, "supported"),
    (0.6, 0.9, "~", 0.5, "contradicted"), (0.2, 0.9, "~", 0.5, "inconclusive"),
    (None, None, ">", 0, "inconclusive"), (1, 2, "info", 0, None)])
def test_verdict_rules(lo, hi, expect, margin, want):
    assert verdict(lo, hi, expect, margin) == want


def test_missing_values_leave_it_inconclusive():
    assert compare([1.0, None], [2.0, 3.0], "<")["verdict"] == "inconclusive"
    assert compare([1.0], [2.0], "<")["verdict"] == "inconclusive"  # one seed


def test_claim_verdict():
    assert claim_verdict(["supported", "supported", None]) == "supported"
    assert claim_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert claim_verdict(["supported", "contradicted"]) == "contradicted"
    assert claim_verdict([None]) == "inconclusive"
