"""DriftSched's EMA drift calibration of the output-length estimator, and error tracking.

The original keeps one bias per workload category, starting at 1.0. After
each completed request::

    measured = clamp(actual_output / base(category), 0.25, 3.0)
    bias     = (1 - alpha) * bias + alpha * measured        # alpha = 0.1

and the next admission estimates with the new bias (see
:func:`driftsim.admission.estimation.estimate_output`). A switch turns calibration off:
the bias then stays at 1.0.

NOTE: ``measured`` divides by the category's *base*, not by the full
estimate, so the bias converges to ``mean(actual) / base`` and the
calibrated estimate to about ``mean(actual) * safety * input_factor``: the
tier safety factor and the input factor stay on top of the learned level.

Beyond the original: the key may be ``"category"`` (the original),
``"tenant"`` or ``"tenant_category"``; :class:`ErrorTracker` reports MAE and
RMSE overall, per group and per time window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from driftsim.admission.estimation import base_tokens, estimate_output

GRANULARITIES: tuple[str, ...] = ("category", "tenant", "tenant_category")


@dataclass(frozen=True)
class Feedback:
    """One calibration step, as the original's ``apply_feedback`` reports it."""

    key: str
    old_bias: float
    measured_bias: float  # after the clamp
    new_bias: float


class DriftCalibrator:
    """Per-key EMA of ``actual / base``; also a :class:`~driftsim.admission.estimation.LengthModel`.

    Keys: ``category`` (the original) -> ``"report"``; ``tenant`` ->
    ``"premium"``; ``tenant_category`` -> ``"premium/report"``. The history of
    bias updates is kept in three flat lists (one row per :meth:`observe`),
    cheap enough for every completion, and returned by :meth:`history`.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        clamp: tuple[float, float] = (0.25, 3.0),
        enabled: bool = True,
        granularity: str = "category",
        initial_bias: float = 1.0,
        record_history: bool = True,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if clamp[0] > clamp[1]:
            raise ValueError(f"clamp low {clamp[0]} exceeds high {clamp[1]}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity '{granularity}'; known: {', '.join(GRANULARITIES)}")
        self.alpha = alpha
        self.clamp = clamp
        self.enabled = enabled
        self.granularity = granularity
        self.initial_bias = initial_bias
        self.record_history = record_history
        self._bias: dict[str, float] = {}
        self._h_time: list[float] = []
        self._h_key: list[str] = []
        self._h_bias: list[float] = []

    def key(self, *, category: str, tenant: str = "") -> str:
        """The bias key of a request under this calibrator's granularity."""
        if self.granularity == "category":
            return category
        if self.granularity == "tenant":
            return tenant
        return f"{tenant}/{category}"

    def bias(self, *, category: str, tenant: str = "") -> float:
        """Current bias for a request (1.0 when calibration is off)."""
        if not self.enabled:
            return 1.0
        return self._bias.get(self.key(category=category, tenant=tenant), self.initial_bias)

    @property
    def biases(self) -> dict[str, float]:
        """Current bias of every key updated so far."""
        return dict(self._bias)

    def predict(self, *, category: str, tenant: str, input_tokens: int) -> int:
        """The original's estimate with the current bias; ``tenant`` is the tier for the safety factor."""
        return estimate_output(category, tenant, input_tokens, self.bias(category=category, tenant=tenant))

    def observe(
        self,
        *,
        category: str,
        actual_output: int,
        tenant: str = "",
        input_tokens: int = 0,
        now: float = 0.0,
        base: float | None = None,
    ) -> Feedback:
        """Feed one completion back; returns the step taken.

        ``base`` overrides ``base(category)`` as the divisor (e.g. a naive
        estimate from :class:`driftsim.admission.estimation.EstimatorErrorModel` for traces
        without text). ``input_tokens`` is unused (kept for the
        :class:`~driftsim.admission.estimation.LengthModel` interface). When calibration is
        off, nothing changes and the step reads 1.0 / 1.0 / 1.0, as in the
        original.
        """
        key = self.key(category=category, tenant=tenant)
        if not self.enabled:
            fb = Feedback(key, 1.0, 1.0, 1.0)
        else:
            divisor = base_tokens(category) if base is None else base
            if divisor <= 0:
                raise ValueError(f"base must be > 0, got {divisor}")
            lo, hi = self.clamp
            measured = max(lo, min(actual_output / divisor, hi))
            old = self._bias.get(key, self.initial_bias)
            new = (1 - self.alpha) * old + self.alpha * measured
            self._bias[key] = new
            fb = Feedback(key, old, measured, new)
        if self.record_history:
            self._h_time.append(now)
            self._h_key.append(key)
            self._h_bias.append(fb.new_bias)
        return fb

    def history(self) -> pl.DataFrame:
        """Bias after every observation: columns ``time_s``, ``key``, ``bias``."""
        return pl.DataFrame(
            {"time_s": self._h_time, "key": self._h_key, "bias": self._h_bias},
            schema={"time_s": pl.Float64, "key": pl.String, "bias": pl.Float64},
        )


def _mae_rmse(err: np.ndarray) -> tuple[float, float]:
    if err.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err * err)))


class ErrorTracker:
    """Accumulates estimated vs actual output lengths; reports MAE and RMSE.

    Errors are ``estimated - actual`` in tokens. Groups (category, tenant)
    are optional labels per record.
    """

    def __init__(self) -> None:
        self._est: list[float] = []
        self._act: list[float] = []
        self._cat: list[str | None] = []
        self._ten: list[str | None] = []
        self._t: list[float] = []

    def record(
        self, *, estimated: float, actual: float, category: str | None = None, tenant: str | None = None, time_s: float = 0.0
    ) -> None:
        """Add one (estimated, actual) pair, observed at ``time_s`` seconds."""
        self._est.append(float(estimated))
        self._act.append(float(actual))
        self._cat.append(category)
        self._ten.append(tenant)
        self._t.append(float(time_s))

    def __len__(self) -> int:
        return len(self._est)

    def frame(self) -> pl.DataFrame:
        """All records: ``time_s, category, tenant, estimated, actual, error``."""
        return pl.DataFrame(
            {"time_s": self._t, "category": self._cat, "tenant": self._ten, "estimated": self._est, "actual": self._act},
            schema={"time_s": pl.Float64, "category": pl.String, "tenant": pl.String, "estimated": pl.Float64, "actual": pl.Float64},
        ).with_columns(error=pl.col("estimated") - pl.col("actual"))

    def mae(self) -> float:
        return _mae_rmse(np.asarray(self._est) - np.asarray(self._act))[0]

    def rmse(self) -> float:
        return _mae_rmse(np.asarray(self._est) - np.asarray(self._act))[1]

    def by(self, column: str = "category") -> pl.DataFrame:
        """MAE and RMSE per ``category`` or ``tenant``: columns ``<column>, n, mae, rmse``."""
        if column not in ("category", "tenant"):
            raise ValueError("column must be 'category' or 'tenant'")
        return (
            self.frame()
            .group_by(column, maintain_order=True)
            .agg(
                n=pl.len(),
                mae=pl.col("error").abs().mean(),
                rmse=(pl.col("error") ** 2).mean().sqrt(),
            )
            .sort(column, nulls_last=True)
        )

    def over_time(self, window_s: float) -> pl.DataFrame:
        """MAE and RMSE per time window ``[k*window_s, (k+1)*window_s)``: ``window_start_s, n, mae, rmse``."""
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        return (
            self.frame()
            .with_columns(window_start_s=(pl.col("time_s") / window_s).floor() * window_s)
            .group_by("window_start_s")
            .agg(n=pl.len(), mae=pl.col("error").abs().mean(), rmse=(pl.col("error") ** 2).mean().sqrt())
            .sort("window_start_s")
        )


def error_reduction(baseline: ErrorTracker, improved: ErrorTracker) -> dict[str, float]:
    """Percent reduction of MAE and RMSE from ``baseline`` to ``improved`` (the paper's 38.8 % / 40.5 % kind)."""
    return {
        "mae_pct": 100.0 * (1.0 - improved.mae() / baseline.mae()),
        "rmse_pct": 100.0 * (1.0 - improved.rmse() / baseline.rmse()),
    }


def mae_rmse(estimated: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """MAE and RMSE of two equal-length sequences (NaN when empty)."""
    e, a = np.asarray(estimated, dtype=float), np.asarray(actual, dtype=float)
    if e.shape != a.shape:
        raise ValueError("estimated and actual differ in length")
    return _mae_rmse(e - a)
