"""Admission: what the gateway knows about a request before it runs.

At arrival every request gets an estimated output length (what SJF, SRPT,
VTC and friends order by) from one of three estimators; at completion the
real length is fed back so the estimator can learn (DriftSched's EMA drift
calibration, or an online learned predictor).

- ``oracle``: the real output length (the regret baseline).
- ``driftsched``: the original formula, ``int(base(category) * bias *
  safety(tier) * input_factor)``, category from prompt keywords, with EMA
  calibration on or off. Traces without prompt text use an estimator-error
  model instead: a naive estimate ``actual / ratio`` with the ratio drawn per
  tenant, then the same EMA bias on top (keyed by tenant).
- ``learned``: an online quantile model of output length (scikit-learn).

Units follow the token counter, as in the original: the ``whitespace``
variant counts prompt words and observes the output in words (estimated
from the generated tokens), the ``tokenizer`` variant counts real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import polars as pl

from driftsim.admission.calibration import DriftCalibrator, mae_rmse
from driftsim.admission.estimation import (
    MEDIUM_MAX_TOKENS,
    SHORT_MAX_TOKENS,
    EstimatorErrorModel,
    RatioDist,
    classify_category,
    estimate_output,
    words_from_tokens,
)
from driftsim.traces.tokens import TokenizerCounter, WhitespaceCounter
from driftsim.admission.length_predictor import OnlineLengthPredictor
from driftsim.errors import ConfigError

ESTIMATORS = ("oracle", "driftsched", "learned")


class AdmittedRequest(Protocol):
    """What admission reads and writes of a request (the simulator's ``SimRequest`` is one)."""

    idx: int
    tenant: str
    input_tokens: int
    output_tokens: int
    generated: int
    est_tokens: int


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """How output lengths are estimated at admission and learned from completions."""

    estimator: Literal["oracle", "driftsched", "learned"] = "oracle"
    counter: Literal["whitespace", "tokenizer"] = "tokenizer"
    tokenizer_path: str | None = None  # a local tokenizer.json (or directory) for the tokenizer counter
    calibration: bool = True  # DriftSched's EMA bias on/off
    granularity: Literal["category", "tenant", "tenant_category"] = "category"
    learned_kind: Literal["linear_quantile", "hgb_quantile", "sgd"] = "linear_quantile"  # the learned estimator's model
    alpha: float = 0.1
    # estimator-error model for traces without prompt text: actual/estimate ~ lognormal(median, sigma)
    error_median: float = 1.0
    error_sigma: float = 0.5
    error_per_tenant: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"admission.estimator: expected one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.counter not in ("whitespace", "tokenizer"):
            raise ConfigError(f"admission.counter: expected 'whitespace' or 'tokenizer', got {self.counter!r}")


JOB_SIZE = pl.Enum(["short", "medium", "long"])


def _job_size_expr(budget) -> pl.Expr:
    """Vectorised :func:`driftsim.admission.estimation.job_size` (same thresholds)."""
    budget = budget if isinstance(budget, pl.Expr) else pl.lit(budget)
    return (
        pl.when(budget <= SHORT_MAX_TOKENS)
        .then(pl.lit("short"))
        .when(budget <= MEDIUM_MAX_TOKENS)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("long"))
        .cast(JOB_SIZE)
    )


class Admission:
    """Per-run estimator state plus columnar records of every estimate."""

    def __init__(self, config: AdmissionConfig, trace: pl.DataFrame, *, seed: int = 0) -> None:
        self.cfg = config
        n = trace.height
        if config.estimator == "oracle":
            return  # estimates are the real lengths: nothing to keep per request
        self.est_output = np.zeros(n, dtype=np.int64)
        self.prompt_units = np.zeros(n, dtype=np.int64)  # input length in the counter's units
        self.bias = np.full(n, np.nan)
        self.observed = np.full(n, -1, dtype=np.int64)
        self._naive: np.ndarray | None = None
        words = config.counter == "whitespace"
        self._observe_units = words_from_tokens if words else (lambda t: t)
        self.category: list[str] = ["-"] * n
        self._prompts = trace["prompt"].to_list()
        if config.counter == "tokenizer" and config.tokenizer_path is not None:
            self._counter = TokenizerCounter(config.tokenizer_path)
        elif config.counter == "tokenizer":
            self._counter = None  # use the trace's own token counts
        else:
            self._counter = WhitespaceCounter()
        if config.estimator == "driftsched":
            self.model = DriftCalibrator(alpha=config.alpha, enabled=config.calibration, granularity=config.granularity)
        else:
            self.model = OnlineLengthPredictor(kind=config.learned_kind, seed=seed)
        if trace["prompt"].null_count() > 0:
            per = {t: RatioDist(median=m, sigma=s) for t, (m, s) in config.error_per_tenant.items()}
            errors = EstimatorErrorModel(
                default=RatioDist(median=config.error_median, sigma=config.error_sigma), per_group=per, seed=seed
            )
            actual = self._observe_units(trace["output_tokens"].to_numpy())
            self._naive = errors.estimates(actual, trace["tenant"].to_list(), trace["arrival_s"].to_numpy())

    def admit(self, req: AdmittedRequest) -> None:
        """Attach ``est_tokens`` (input + estimated output) to a request at arrival."""
        i, cfg = req.idx, self.cfg
        if cfg.estimator == "oracle":
            req.est_tokens = req.input_tokens + req.output_tokens
            return
        prompt = self._prompts[i]
        if prompt is None:
            n_in = req.input_tokens
            category = req.tenant
            naive = int(self._naive[i])
            if cfg.estimator == "driftsched":
                bias = self.model.bias(category=category, tenant=req.tenant)
                est = int(naive * bias)
                self.bias[i] = bias
            else:
                est = self.model.predict(category=category, tenant=req.tenant, input_tokens=n_in)
        else:
            category = classify_category(prompt)
            n_in = req.input_tokens if self._counter is None else self._counter.count(prompt)
            if cfg.estimator == "driftsched":
                bias = self.model.bias(category=category, tenant=req.tenant)
                est = estimate_output(category, req.tenant, n_in, bias)
                self.bias[i] = bias
            else:
                est = self.model.predict(category=category, tenant=req.tenant, input_tokens=n_in)
        self.category[i] = category
        self.prompt_units[i] = n_in
        self.est_output[i] = est
        req.est_tokens = n_in + est

    def complete(self, req: AdmittedRequest, t: float) -> None:
        """Feed the real output length back (in the counter's units)."""
        if self.cfg.estimator == "oracle":
            return
        i = req.idx
        observed = int(self._observe_units(req.generated))
        self.observed[i] = observed
        category = self.category[i]
        if self.cfg.estimator == "driftsched":
            base = None if self._prompts[i] is not None else max(1, int(self._naive[i]))
            self.model.observe(category=category, actual_output=observed, tenant=req.tenant, now=t, base=base)
        else:
            self.model.observe(
                category=category, tenant=req.tenant, input_tokens=int(self.prompt_units[i]), actual_output=observed, now=t
            )

    def _estimate_columns(self) -> dict[str, pl.Series | pl.Expr]:
        """A learning estimator's per-request columns for the results table (vectorised; no per-row Python)."""
        observed = pl.Series(self.observed)
        observed = pl.when(observed >= 0).then(observed).alias("observed_output")
        units = pl.Series(self.prompt_units)
        return {
            "category": pl.Series(self.category, dtype=pl.String),
            "est_output": pl.Series(self.est_output),
            "observed_output": observed,
            "est_bias": pl.Series(self.bias),
            "job_size": _job_size_expr(units + pl.Series(self.est_output)),
            "true_job_size": pl.when(observed.is_not_null()).then(_job_size_expr(units + pl.Series(self.observed))),
        }

    def add_columns(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` (a results table) with the estimate columns appended: category, estimated and observed
        output, bias and job sizes. An oracle's estimate is the real length of a completed request (null
        otherwise) and it computes no category, bias or size.

        NOTE: memory. An oracle's columns are built as series, not expressions: evaluating any expression
        on the table materialises its all-null columns (~50 MB at 1M requests), and its observed length
        is the same series as its estimate (one buffer for both).
        """
        if self.cfg.estimator != "oracle":
            return frame.with_columns(**self._estimate_columns())
        n = frame.height
        generated = frame["generated_tokens"].cast(pl.Int64)
        ok = frame["status"] == "ok"
        real = generated if ok.all() else generated.zip_with(ok, pl.repeat(None, n, dtype=pl.Int64, eager=True))
        return frame.with_columns(
            pl.repeat(None, n, dtype=pl.String, eager=True).alias("category"), real.alias("est_output"),
            real.alias("observed_output"), pl.repeat(None, n, dtype=pl.Float64, eager=True).alias("est_bias"),
            pl.repeat(None, n, dtype=JOB_SIZE, eager=True).alias("job_size"),
            pl.repeat(None, n, dtype=JOB_SIZE, eager=True).alias("true_job_size"))

    def history(self) -> pl.DataFrame | None:
        """The DriftSched calibrator's bias after every completion (None for the other estimators)."""
        model = getattr(self, "model", None)
        return model.history() if isinstance(model, DriftCalibrator) else None

    def summary(self, requests: pl.DataFrame) -> dict:
        """Estimation error (MAE, RMSE) overall and per category, and job-size misclassification."""
        if self.cfg.estimator == "oracle":
            return {"estimator": "oracle", "mae": 0.0, "rmse": 0.0}
        done = requests.select(
            "category", "est_output", "observed_output", "job_size", "true_job_size"
        ).filter(pl.col("observed_output").is_not_null())
        if done.height == 0:
            return {"estimator": self.cfg.estimator, "completed": 0}
        mae, rmse = mae_rmse(done["est_output"].to_numpy(), done["observed_output"].to_numpy())
        per_cat = {}
        for cat, part in done.group_by("category", maintain_order=True):
            m, r = mae_rmse(part["est_output"].to_numpy(), part["observed_output"].to_numpy())
            per_cat[cat[0]] = {"requests": part.height, "mae": m, "rmse": r}
        out = {
            "estimator": self.cfg.estimator,
            "counter": self.cfg.counter,
            "calibration": self.cfg.calibration,
            "completed": done.height,
            "mae": mae,
            "rmse": rmse,
            "by_category": dict(sorted(per_cat.items())),
            "misclassification_rate": float((done["job_size"] != done["true_job_size"]).mean()),
        }
        if self.cfg.estimator == "driftsched":
            out["final_bias"] = self.model.biases
        return out
