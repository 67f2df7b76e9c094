"""benchmarks/targets.py's verdicts: each target read from the right figure, floors and ceilings
the right way round, a figure not measured (absent or NaN) neither met nor failed."""

from __future__ import annotations

import math
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from targets import TARGETS, verdicts  # noqa: E402


def results(**overrides) -> dict:
    r = {"peers": {"rnn_scratch": {"training_ratio": 1.30, "end_to_end_ratio": 1.12},
                   "lstm": {"end_to_end_ratio": 1.04}, "rnn": {"end_to_end_ratio": math.nan}},
         "epochs": {"default": {"validation_share": 0.043, "probe_share": 0.11},
                    "float32": {"validation_share": 0.051, "probe_share": 0.05}}}
    r.update(overrides)
    return r


def test_each_target_is_judged_on_its_own_figure():
    rows = {row["target"]: row for row in verdicts(results())}
    assert len(rows) == len(TARGETS)
    assert rows["rnn_scratch training / the book's program"]["met"] is True  # 1.30 >= 1.25
    assert rows["rnn_scratch end to end / the book's program"]["met"] is True  # 1.12 >= 1.10
    assert rows["lstm end to end / pytorch/examples"]["met"] is False  # 1.04 < 1.05
    assert rows["validation share of a default epoch"]["met"] is True  # a ceiling: 4.3% <= 5%
    assert rows["validation share of a float32 epoch"]["met"] is False  # 5.1% > 5%
    assert rows["gradient probe share of its epoch"]["met"] is False  # 11% > 10%
    assert rows["gradient probe share of its epoch, float32"]["value"] == 0.05


def test_a_figure_not_measured_is_neither_met_nor_failed():
    rows = {row["target"]: row for row in verdicts(results(epochs={}))}
    nan = rows["rnn end to end / pytorch/examples"]  # runs too short: the rate is NaN
    assert nan["value"] is None and nan["met"] is None
    assert rows["validation share of a default epoch"]["met"] is None  # no profile was run
