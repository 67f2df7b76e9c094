"""Intervals over seeds and the verdict of a predicted direction (rnnlab.claims).

    from rnnlab.claims.stats import interval, compare
    interval([5.1, 5.3, 5.2])                      # {"mean": 5.2, "lo": ..., "hi": ..., "n": 3}
    compare([5.1, 5.3], [6.0, 6.4], expect="<", scale="log")   # a < b? per-seed pairs

The interval is Student-t: mean +- t(0.975, n-1) * sd / sqrt(n), sd with n-1 in the denominator.
A comparison is paired by seed (seed s of level a against seed s of level b), so what the seeds
share (the data order, the initial weights' draw) cancels; its interval is the t interval of the
per-seed differences a - b (on log values for scale=log: a difference of log perplexities is a
log ratio). Verdicts, from the 95% interval [lo, hi] of a - b:
  expect "<":  supported if hi < 0, contradicted if lo > 0, else inconclusive;
  expect ">":  the mirror image;
  expect "~":  (equal within `margin`) supported if -margin < lo and hi < margin, contradicted
               if the interval lies wholly outside [-margin, margin], else inconclusive;
  expect "info": measured, no prediction, no verdict.
Fewer than 2 pairs, or a missing (non-finite) value, leaves a comparison inconclusive: an interval
needs two seeds. Seeds that all agree give a zero-width interval; the page says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# t(0.975, df) for df = 1..30 (standard tables); beyond, a Cornish-Fisher expansion that is
# within 1e-4 of the exact quantile, so no scipy is needed
_T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
_Z975 = 1.959964

EXPECTS = ("<", ">", "~", "info")
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"df={df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: Sequence[float]) -> dict:
    """Mean and 95% Student-t interval of the finite values; lo/hi are None below 2 values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    out = {"mean": float(x.mean()) if n else None, "lo": None, "hi": None, "n": n,
           "missing": len(values) - n}
    if n >= 2:
        half = t975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
        out.update(lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def _scaled(v: float | None, scale: str) -> float:
    if v is None or not math.isfinite(v):
        return math.nan
    if scale == "log":
        return math.log(v) if v > 0 else math.nan
    return float(v)


def verdict(lo: float | None, hi: float | None, expect: str, margin: float = 0.0) -> str | None:
    """The verdict of one comparison from its interval of a - b (see the module docstring)."""
    if expect == "info":
        return None
    if lo is None or hi is None:
        return INCONCLUSIVE
    if expect == "<":
        return SUPPORTED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    if expect == ">":
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    if expect == "~":
        if -margin < lo and hi < margin:
            return SUPPORTED
        return CONTRADICTED if lo > margin or hi < -margin else INCONCLUSIVE
    raise ValueError(f"expect={expect!r} is unknown; use one of {list(EXPECTS)}")


def compare(a: Sequence[float | None], b: Sequence[float | None], expect: str,
            scale: str = "linear", margin: float = 0.0) -> dict:
    """Paired comparison of two levels' per-seed values (index i of a pairs with index i of b):
    the mean difference a - b on `scale`, its 95% interval and the verdict."""
    if len(a) != len(b):
        raise ValueError(f"paired levels need as many values: {len(a)} vs {len(b)}")
    if scale not in ("linear", "log"):
        raise ValueError(f"scale={scale!r} must be linear or log")
    diffs = [_scaled(x, scale) - _scaled(y, scale) for x, y in zip(a, b)]
    iv = interval(diffs)
    return {"expect": expect, "scale": scale, "margin": margin, "diffs": diffs,
            "mean": iv["mean"], "lo": iv["lo"], "hi": iv["hi"], "n": iv["n"],
            "missing": iv["missing"],
            "verdict": verdict(iv["lo"], iv["hi"], expect, margin) if not iv["missing"]
            else (None if expect == "info" else INCONCLUSIVE)}


def claim_verdict(verdicts: Sequence[str | None]) -> str:
    """A claim with several predicted comparisons: contradicted if any is, supported if all are,
    else inconclusive (a claim with no prediction is inconclusive)."""
    vs = [v for v in verdicts if v is not None]
    if CONTRADICTED in vs:
        return CONTRADICTED
    return SUPPORTED if vs and all(v == SUPPORTED for v in vs) else INCONCLUSIVE
