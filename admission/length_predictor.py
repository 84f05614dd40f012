"""An online learned output-length predictor (beyond DriftSched).

Same interface as :class:`driftsim.admission.calibration.DriftCalibrator`
(:class:`driftsim.admission.estimation.LengthModel`): ``predict(category=, tenant=,
input_tokens=)`` at admission, ``observe(..., actual_output=)`` on
completion, so the two can be run side by side on one trace and compared
with :class:`driftsim.admission.calibration.ErrorTracker`.

Features: prompt length (``input_tokens / 1000``), tenant one-hot, category
one-hot. An unknown tenant or category gets an all-zero block. Models
(``kind``):

* ``"hgb_quantile"`` (default): ``HistGradientBoostingRegressor(loss=
  "quantile")`` refit every ``refit_every`` completions on the last
  ``window`` observations; predicts the ``quantile`` of the output length.
* ``"linear_quantile"``: ``QuantileRegressor`` (linear, HiGHS solver), same
  refit schedule.
* ``"sgd"``: ``SGDRegressor`` updated by ``partial_fit`` on every
  observation (squared loss on ``log1p(output)``, so it predicts roughly the
  geometric mean), no window.

Until the first fit (``min_samples`` observations) it falls back to the
original formula without calibration (``estimate_output`` with bias 1.0),
so its early behaviour matches the uncalibrated DriftSched estimator.
NOTE: the learned prediction carries no tier safety factor; the quantile
plays that role. Deterministic for a seed: the fits use ``random_state=seed``
and no early stopping, and data arrive in completion order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from driftsim.admission.estimation import CATEGORIES, estimate_output

KINDS: tuple[str, ...] = ("hgb_quantile", "linear_quantile", "sgd")


class OnlineLengthPredictor:
    """Learns output length from (prompt length, tenant, category) online; a :class:`~driftsim.admission.estimation.LengthModel`."""

    def __init__(
        self,
        *,
        kind: str = "hgb_quantile",
        quantile: float = 0.5,
        refit_every: int = 100,
        window: int = 2000,
        min_samples: int = 50,
        tenants: Sequence[str] = ("premium", "standard", "batch"),
        categories: Sequence[str] = CATEGORIES,
        max_output: int | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind '{kind}'; known: {', '.join(KINDS)}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if refit_every < 1 or window < 1 or min_samples < 1:
            raise ValueError("refit_every, window and min_samples must be >= 1")
        self.kind = kind
        self.quantile = quantile
        self.refit_every = refit_every
        self.window = window
        self.min_samples = min_samples
        self.max_output = max_output
        self.seed = seed
        self._tenant_ix = {t: i for i, t in enumerate(tenants)}
        self._cat_ix = {c: i for i, c in enumerate(categories)}
        self._n_features = 1 + len(self._tenant_ix) + len(self._cat_ix)
        self._X: deque[np.ndarray] = deque(maxlen=window)
        self._y: deque[float] = deque(maxlen=window)
        self._since_fit = 0
        self.n_observed = 0
        self.n_fits = 0
        self._model = None
        if kind == "sgd":
            from sklearn.linear_model import SGDRegressor  # NOTE: slow import (scikit-learn), only for the learned estimator

            self._sgd = SGDRegressor(learning_rate="constant", eta0=0.01, random_state=seed)

    def features(self, *, category: str, tenant: str, input_tokens: int) -> np.ndarray:
        """Feature row: ``[input_tokens/1000, tenant one-hot..., category one-hot...]``."""
        x = np.zeros(self._n_features)
        x[0] = input_tokens / 1000.0
        if (i := self._tenant_ix.get(tenant)) is not None:
            x[1 + i] = 1.0
        if (j := self._cat_ix.get(category)) is not None:
            x[1 + len(self._tenant_ix) + j] = 1.0
        return x

    @property
    def fitted(self) -> bool:
        """True once a learned model answers (else the formula fallback does)."""
        return self._model is not None

    def predict(self, *, category: str, tenant: str, input_tokens: int) -> int:
        """Predicted output length, tokens (>= 1, capped at ``max_output`` if set)."""
        if self._model is None:
            pred = float(estimate_output(category, tenant, input_tokens, 1.0))
        else:
            x = self.features(category=category, tenant=tenant, input_tokens=input_tokens)
            if self.kind == "hgb_quantile":
                pred = float(self._model.predict(x[None, :])[0])
            else:  # linear models: the dot product directly (sklearn's per-call overhead dominates one row)
                pred = float(x @ self._model.coef_ + np.ravel(self._model.intercept_)[0])
            if self.kind == "sgd":
                pred = float(np.expm1(pred))
        if not np.isfinite(pred):
            pred = 1.0
        out = max(1, int(round(pred)))
        return min(out, self.max_output) if self.max_output is not None else out

    def observe(self, *, category: str, tenant: str, input_tokens: int, actual_output: int, now: float = 0.0) -> None:
        """Add one completion; refits (or updates, for ``sgd``) when due."""
        x = self.features(category=category, tenant=tenant, input_tokens=input_tokens)
        self.n_observed += 1
        if self.kind == "sgd":
            self._sgd.partial_fit(x[None, :], [np.log1p(actual_output)])
            if self.n_observed >= self.min_samples:
                self._model = self._sgd
            return
        self._X.append(x)
        self._y.append(float(actual_output))
        self._since_fit += 1
        if len(self._y) >= self.min_samples and (self._model is None or self._since_fit >= self.refit_every):
            self._refit()

    def _refit(self) -> None:
        X = np.vstack(self._X)
        y = np.asarray(self._y)
        if self.kind == "hgb_quantile":
            from sklearn.ensemble import HistGradientBoostingRegressor  # NOTE: slow import, as above

            model = HistGradientBoostingRegressor(
                loss="quantile",
                quantile=self.quantile,
                max_iter=30,  # few features and smooth targets; the quantile loss's per-leaf update is slow
                max_leaf_nodes=15,
                early_stopping=False,
                random_state=self.seed,
            )
        else:
            from sklearn.linear_model import QuantileRegressor  # NOTE: slow import, as above

            model = QuantileRegressor(quantile=self.quantile, alpha=0.0, solver="highs")
        model.fit(X, y)
        self._model = model
        self._since_fit = 0
        self.n_fits += 1
