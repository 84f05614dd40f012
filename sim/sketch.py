"""Streaming percentiles with a guaranteed relative error, in memory independent of the count.

A run of tens of millions of requests cannot keep every latency to sort at
the end; :class:`QuantileSketch` keeps a histogram with logarithmic buckets
instead (the DDSketch construction: Masson, Rim and Lee, VLDB 2019).
"""

from __future__ import annotations

import math

import numpy as np

#: default relative error: every quantile within 0.5 % of the exact value
DEFAULT_ALPHA = 0.005


class QuantileSketch:
    """Quantiles of non-negative numbers within relative error ``alpha``, mergeable.

    Bound: for every q in [0, 1], ``quantile(q)`` is within ``alpha * exact``
    of the exact linearly interpolated quantile (numpy's and polars' default:
    the order statistics at ranks floor(q (n-1)) and the next, weighted), for
    values >= ``min_value``; values below ``min_value`` (zero included) are
    stored as 0, an absolute error under ``min_value``. Why it holds: value x
    goes to bucket i = ceil(log_gamma x), gamma = (1 + alpha) / (1 - alpha),
    which holds (gamma^(i-1), gamma^i]; reporting 2 gamma^i / (gamma + 1) is
    within alpha of anything in it; buckets are ordered like values, so the
    bucket where the cumulative count passes rank r holds the r-th order
    statistic; and a weighted mean of two estimates each within alpha of its
    target is within alpha of the weighted mean of the targets.

    Counts, the sum (hence the mean), min and max are exact. Memory is one
    integer per bucket between the smallest and largest value seen: about
    ln(max / min) / (2 alpha) buckets (3,500 for 1 ns .. 1e6 s at 0.5 %).
    Two sketches with the same ``alpha`` and ``min_value`` merge exactly
    (the merge equals the sketch of the concatenated data).
    """

    __slots__ = ("alpha", "min_value", "_log_gamma", "_gamma", "_counts", "_offset", "zeros", "count", "sum", "min", "max")

    def __init__(self, alpha: float = DEFAULT_ALPHA, *, min_value: float = 1e-9) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha: expected a relative error in (0, 1), got {alpha!r}")
        if not min_value > 0:
            raise ValueError(f"min_value: expected a number > 0, got {min_value!r}")
        self.alpha = float(alpha)
        self.min_value = float(min_value)
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._counts = np.zeros(0, dtype=np.int64)  # bucket key self._offset + j -> count
        self._offset = 0
        self.zeros = 0  # values below min_value
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values) -> None:
        """Add numbers (a scalar or an array); NaN is refused, as is any negative value."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return
        if not np.all(x >= 0):  # also catches NaN
            bad = x[~(x >= 0)][0]
            raise ValueError(f"QuantileSketch takes numbers >= 0, got {bad!r}")
        self.count += int(x.size)
        self.sum += float(x.sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        small = x < self.min_value
        self.zeros += int(small.sum())
        keys = np.ceil(np.log(x[~small]) / self._log_gamma).astype(np.int64)
        if keys.size:
            self._add_counts(int(keys.min()), np.bincount(keys - keys.min()))

    def _add_counts(self, lo: int, counts: np.ndarray) -> None:
        """Add ``counts`` for the keys lo, lo+1, ... to the store, widening it as needed."""
        if self._counts.size == 0:
            self._counts, self._offset = counts.astype(np.int64), lo
            return
        start = min(self._offset, lo)
        stop = max(self._offset + self._counts.size, lo + counts.size)
        if start != self._offset or stop != self._offset + self._counts.size:
            wider = np.zeros(stop - start, dtype=np.int64)
            wider[self._offset - start : self._offset - start + self._counts.size] = self._counts
            self._counts, self._offset = wider, start
        self._counts[lo - self._offset : lo - self._offset + counts.size] += counts

    def merge(self, other: QuantileSketch) -> None:
        """Add everything ``other`` holds (same alpha and min_value) into this sketch."""
        if (other.alpha, other.min_value) != (self.alpha, self.min_value):
            raise ValueError(
                f"cannot merge sketches with different parameters: alpha {self.alpha} vs {other.alpha},"
                f" min_value {self.min_value} vs {other.min_value}"
            )
        if other._counts.size:
            self._add_counts(other._offset, other._counts)
        self.zeros += other.zeros
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def _value_at_rank(self, rank: int, cum: np.ndarray) -> float:
        """Estimate of the rank-th smallest value (0-based)."""
        if rank < self.zeros:
            return 0.0
        j = int(np.searchsorted(cum, rank - self.zeros, side="right"))
        key = self._offset + j
        return 2.0 * self._gamma**key / (self._gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The q-quantile (linear interpolation between order statistics); NaN when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q: expected a number in [0, 1], got {q!r}")
        if self.count == 0:
            return math.nan
        cum = np.cumsum(self._counts)
        pos = q * (self.count - 1)
        lo = math.floor(pos)
        frac = pos - lo
        low = self._value_at_rank(lo, cum)
        if frac == 0:
            return low
        return low + frac * (self._value_at_rank(lo + 1, cum) - low)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"QuantileSketch(alpha={self.alpha}, count={self.count}, buckets={self._counts.size})"
