"""Confidence intervals across seeds: mean and a Student-t interval.

With n seeds giving values x_1..x_n, the interval is

    mean +- t_{(1+c)/2, n-1} * s / sqrt(n),     s = sample standard deviation (ddof 1),

the usual small-sample interval for a mean (it assumes the per-seed values
are independent and roughly normal; with 3-5 seeds it is wide, as it should
be). One seed gives no interval (NaN half-width). Non-finite values (a
tenant with no completed requests) are left out and counted in ``n_nan``.

The t quantile comes from scipy when it is importable (scikit-learn, a
driftsim dependency, requires it); otherwise from the table below, which
covers c = 0.95 (two-sided) exactly for every df.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# two-sided 95 % Student-t critical values t_{0.975, df}, df = 1..30, then 40, 60, 120 (and the normal 1.96 beyond)
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t critical value for ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    try:
        from scipy.stats import t  # NOTE: optional (scipy comes with scikit-learn); the _T975 table otherwise

        return float(t.ppf((1 + confidence) / 2, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        pass
    if confidence != 0.95:  # pragma: no cover
        raise ValueError("without scipy only 95 % intervals are available")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        return 1.96 + (_T975[120] - 1.96) * 120 / df  # ~1/df approach to the normal value
    lo = max(k for k in keys if k < df)
    hi = min(k for k in keys if k > df)
    w = (1 / lo - 1 / df) / (1 / lo - 1 / hi)  # interpolate in 1/df, as t tables advise
    return _T975[lo] + w * (_T975[hi] - _T975[lo])


@dataclass(frozen=True)
class MeanCI:
    n: int
    mean: float
    std: float
    half_width: float
    n_nan: int = 0

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean and ``confidence`` t-interval half-width of ``values`` (non-finite values dropped)."""
    x = np.asarray(list(values), dtype=float)
    finite = x[np.isfinite(x)]
    n = finite.size
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, int(x.size))
    mean = float(finite.mean())
    if n == 1:
        return MeanCI(1, mean, math.nan, math.nan, int(x.size - n))
    std = float(finite.std(ddof=1))
    return MeanCI(n, mean, std, t_critical(n - 1, confidence) * std / math.sqrt(n), int(x.size - n))
